"""spinesegdiff: lumbar spine MRI segmentation with a dual-encoder diffusion model and uncertainty heatmaps.

Implements SpineSegDiff (Monzon et al., MIDL) on the SPIDER dataset (van der Graaf et al., Scientific Data
11:264, 2024, CC BY 4.0). Heavy dependencies (torch, SimpleITK) are imported by the modules that need them,
so ``import spinesegdiff`` and ``spinesegdiff --help`` stay instant.
"""

__version__ = "0.1.0"


def segment(*args, **kwargs):
    """Segment a scan: see :func:`spinesegdiff.pipelines.predict.segment` (imported lazily to keep start-up instant)."""
    from spinesegdiff.pipelines.predict import segment as _segment

    return _segment(*args, **kwargs)
