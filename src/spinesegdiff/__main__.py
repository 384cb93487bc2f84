from spinesegdiff.cli import main

raise SystemExit(main())
