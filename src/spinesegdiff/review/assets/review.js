// spinesegdiff review page: the table, the viewer and the triage, in plain JavaScript (no library, no network).
// The case data is the JSON in #review-data; each case's layers are PNG files and probe scripts beside the page.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const cases = new Map(data.cases.map((c) => [c.id, c]));
  const storageKey = "spinesegdiff-review:" + data.storageKey;
  const tbody = document.querySelector("#cases tbody");
  const rows = new Map(Array.from(tbody.rows, (row) => [row.dataset.case, row]));
  const structureNames = ["background"].concat(data.legend.structures.map((s) => s.name));
  const decisionNames = { accepted: "accepted", needs_correction: "needs correction", rejected: "rejected" };
  const $ = (id) => document.getElementById(id);
  const view = { zoom: 1, panX: 0, panY: 0, fit: 1 };
  const state = { selected: null, slices: new Map(), decisions: loadDecisions() };
  const probes = new Map();
  const PROBES_KEPT = 64;  // decoded slices kept (a 640 x 512 slice takes 330 kB), the oldest dropped first

  // ---- decisions, kept in this browser's storage under the results folder's path ----
  function loadDecisions() {
    try {
      const parsed = JSON.parse(window.localStorage.getItem(storageKey) || "{}");
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch (error) {
      return {};
    }
  }

  function saveDecisions() {
    try {
      window.localStorage.setItem(storageKey, JSON.stringify(state.decisions));
    } catch (error) {
      setStatus("This browser did not keep the decisions (storage full or disabled): export them now.");
    }
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function decide(id, decision, note) {
    if (!cases.has(id)) return;
    const old = state.decisions[id] || {};
    const entry = {
      decision: decision === undefined ? old.decision || "" : decision,
      note: note === undefined ? old.note || "" : note,
      at: new Date().toISOString(),
    };
    if (!entry.decision && !entry.note) delete state.decisions[id];
    else state.decisions[id] = entry;
    saveDecisions();
    showDecision(id);
    updateProgress();
  }

  function showDecision(id) {
    const row = rows.get(id);
    const entry = state.decisions[id];
    const decision = entry && decisionNames[entry.decision] ? entry.decision : "";
    row.dataset.decision = decision;
    const cell = row.querySelector("td.decision");
    cell.textContent = decision ? decisionNames[decision] : "–";
    cell.dataset.value = decision;
    if (entry && entry.note) cell.title = entry.note;
    else cell.removeAttribute("title");
    if (id === state.selected) fillTriage(id);
  }

  function updateProgress() {
    const counts = { accepted: 0, needs_correction: 0, rejected: 0 };
    for (const id of cases.keys()) {
      const entry = state.decisions[id];
      if (entry && entry.decision in counts) counts[entry.decision] += 1;
    }
    const decided = counts.accepted + counts.needs_correction + counts.rejected;
    $("progress").textContent = `${decided} of ${cases.size} decided: ${counts.accepted} accepted, ` +
      `${counts.needs_correction} needs correction, ${counts.rejected} rejected.`;
    applyFilter();
  }

  function csvField(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function exportCsv() {
    const lines = [data.columns.join(",")];
    for (const c of data.cases) {
      const entry = state.decisions[c.id];
      if (!entry || !decisionNames[entry.decision]) continue;
      lines.push([c.path, c.id, entry.decision, entry.note || "", entry.at || ""].map(csvField).join(","));
    }
    return lines.join("\n") + "\n";
  }

  function download() {
    const text = exportCsv();
    const count = text.split("\n").length - 2;
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = data.exportName;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    setStatus(`Exported ${count} decision${count === 1 ? "" : "s"} as ${data.exportName}.`);
  }

  function parseCsv(text) {
    const records = [];
    let record = [], field = "", quoted = false;
    for (let i = 0; i < text.length; i += 1) {
      const ch = text[i];
      if (quoted) {
        if (ch === '"' && text[i + 1] === '"') { field += '"'; i += 1; }
        else if (ch === '"') quoted = false;
        else field += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") { record.push(field); field = ""; }
      else if (ch === "\n" || ch === "\r") {
        if (ch === "\r" && text[i + 1] === "\n") i += 1;
        record.push(field); records.push(record); record = []; field = "";
      } else field += ch;
    }
    if (field !== "" || record.length) { record.push(field); records.push(record); }
    return records;
  }

  function importCsv(text) {
    const records = parseCsv(text.replace(/^\ufeff/, ""));
    const header = (records.shift() || []).map((name) => name.trim().toLowerCase());
    const at = (name) => header.indexOf(name);
    if (at("case") < 0 || at("decision") < 0) {
      setStatus("Not a triage CSV: its header has no case and decision columns.");
      return;
    }
    let taken = 0, skipped = 0;
    for (const record of records) {
      if (record.every((value) => !value.trim())) continue;
      const id = (record[at("case")] || "").trim();
      const decision = (record[at("decision")] || "").trim();
      if (!cases.has(id) || !decisionNames[decision]) { skipped += 1; continue; }
      const note = at("note") >= 0 ? record[at("note")] || "" : "";
      state.decisions[id] = { decision, note: note.trim(), at: (record[at("reviewed_at")] || "").trim() || new Date().toISOString() };
      showDecision(id);
      taken += 1;
    }
    saveDecisions();
    updateProgress();
    setStatus(`Imported ${taken} decision${taken === 1 ? "" : "s"}` +
      (skipped ? `; ${skipped} row${skipped === 1 ? "" : "s"} left out (case not on this page or unknown decision).` : "."));
  }

  // ---- the table: sorting, filtering, moving between cases ----
  function sortValue(row, key) {
    if (key === "rank") return Number(row.dataset.rank);
    if (key === "case") return row.dataset.case.toLowerCase();
    if (key === "verdict") return row.querySelector("td.verdict").textContent;
    const value = row.querySelector(`[data-key="${key}"]`).dataset.value;
    if (value === "") return null;
    const number = Number(value);
    return Number.isNaN(number) ? value : number;
  }

  function sortBy(key, descending) {
    const keyed = Array.from(tbody.rows, (row) => ({ row, value: sortValue(row, key), rank: Number(row.dataset.rank) }));
    keyed.sort((a, b) => {
      const x = a.value, y = b.value;
      if (x === y) return a.rank - b.rank;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * (descending ? -1 : 1);
    });
    tbody.append(...keyed.map((entry) => entry.row));
    for (const th of document.querySelectorAll("#cases thead th[data-sort]")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
    if (state.selected) rows.get(state.selected).scrollIntoView({ block: "nearest" });
  }

  function applyFilter() {
    const text = $("filter").value.trim().toLowerCase();
    const undecided = $("undecided-only").checked;
    for (const [id, row] of rows) {
      const entry = state.decisions[id];
      const decided = Boolean(entry && decisionNames[entry.decision]);
      row.hidden = (text !== "" && !id.toLowerCase().includes(text)) || (undecided && decided && id !== state.selected);
    }
  }

  function visibleRows() {
    return Array.from(tbody.rows).filter((row) => !row.hidden);
  }

  function move(step) {
    const shown = visibleRows();
    if (!shown.length) return;
    const at = shown.findIndex((row) => row.dataset.case === state.selected);
    const next = at < 0 ? 0 : Math.min(shown.length - 1, Math.max(0, at + step));
    select(shown[next].dataset.case);
  }

  // ---- the viewer ----
  function select(id) {
    if (!cases.has(id)) return;
    if (state.selected) rows.get(state.selected).removeAttribute("aria-current");
    state.selected = id;
    const row = rows.get(id);
    row.setAttribute("aria-current", "true");
    row.scrollIntoView({ block: "nearest" });
    const c = cases.get(id);
    $("viewer-title").textContent = `${c.rank}. ${c.id}`;
    $("viewer-flags").replaceChildren(...c.flags.map((flag) => {
      const span = document.createElement("span");
      span.className = "flag";
      span.textContent = flag;
      return span;
    }));
    $("triage").disabled = false;
    fillTriage(id);
    showDetails(c);
    buildStack(c);
  }

  function fillTriage(id) {
    const entry = state.decisions[id] || {};
    for (const input of document.querySelectorAll('#triage input[name="decision"]')) {
      input.checked = input.value === (decisionNames[entry.decision] ? entry.decision : "");
    }
    if (document.activeElement !== $("note")) $("note").value = entry.note || "";
  }

  function buildStack(c) {
    const stack = $("stack");
    stack.replaceChildren();
    const layers = c.layers;
    $("no-layers").hidden = Boolean(layers);
    $("slice-control").hidden = !layers || layers.slices.length < 2;
    $("readout").textContent = "\u00a0";
    if (!layers) return;
    for (const kind of ["image", "labels", "uncertainty"]) {
      if (kind === "image" && !layers.image) continue;
      const img = document.createElement("img");
      img.className = kind;
      img.dataset.kind = kind;
      img.alt = `${kind} of ${c.id}`;
      img.decoding = "async";
      stack.append(img);
    }
    const slider = $("slice");
    slider.min = 0;
    slider.max = layers.slices.length - 1;
    if (!state.slices.has(c.id)) state.slices.set(c.id, layers.initial);
    fitView();
    showSlice();
  }

  function currentSlice(c) {
    return state.slices.get(c.id);
  }

  function showSlice() {
    const c = cases.get(state.selected);
    if (!c || !c.layers) return;
    const slice = currentSlice(c);
    $("slice").value = c.layers.slices.indexOf(slice);
    $("slice-label").textContent = `${slice} (${c.layers.slices.indexOf(slice) + 1} of ${c.layers.slices.length})`;
    for (const img of $("stack").querySelectorAll("img")) {
      img.src = `${c.layers.dir}/${img.dataset.kind}-${slice}.png`;
      img.alt = `${img.dataset.kind} of ${c.id}, sagittal slice ${slice}`;
    }
    applyLayerSettings();
    requestProbe(c, slice);
  }

  function stepSlice(step) {
    const c = cases.get(state.selected);
    if (!c || !c.layers) return;
    const at = c.layers.slices.indexOf(currentSlice(c));
    const next = Math.min(c.layers.slices.length - 1, Math.max(0, at + step));
    state.slices.set(c.id, c.layers.slices[next]);
    showSlice();
  }

  function applyLayerSettings() {
    for (const img of $("stack").querySelectorAll("img")) {
      const kind = img.dataset.kind;
      img.hidden = !$(`show-${kind}`).checked;
      if (kind !== "image") img.style.opacity = String($(`${kind}-opacity`).value / 100);
    }
  }

  function fitView() {
    const c = cases.get(state.selected);
    if (!c || !c.layers) return;
    const stage = $("stage");
    const width = stage.clientWidth, height = stage.clientHeight;
    const aspect = c.layers.widthMm / c.layers.heightMm;
    const fitWidth = Math.min(width, height * aspect);
    const stack = $("stack");
    stack.style.width = `${fitWidth}px`;
    stack.style.height = `${fitWidth / aspect}px`;
    view.zoom = 1;
    view.panX = (width - fitWidth) / 2;
    view.panY = (height - fitWidth / aspect) / 2;
    applyTransform();
  }

  function zoomAt(factor, x, y) {
    const zoom = Math.min(16, Math.max(0.5, view.zoom * factor));
    const stage = $("stage");
    const cx = x === undefined ? stage.clientWidth / 2 : x;
    const cy = y === undefined ? stage.clientHeight / 2 : y;
    view.panX = cx - (cx - view.panX) * (zoom / view.zoom);
    view.panY = cy - (cy - view.panY) * (zoom / view.zoom);
    view.zoom = zoom;
    applyTransform();
  }

  function applyTransform() {
    $("stack").style.transform = `translate(${view.panX}px, ${view.panY}px) scale(${view.zoom})`;
    $("zoom-level").textContent = `${Math.round(view.zoom * 100)}%`;
  }

  function showDetails(c) {
    const parts = [];
    const number = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
    const text = (value) => (value === null || value === undefined ? "–" : String(value));
    parts.push(table(["structure", c.mode === "volume" ? "volume (mm³)" : "area (mm²)", "mean uncertainty", "max"],
      Object.entries(c.structures).map(([abbreviation, s]) => [
        `${s.name} (${abbreviation})`, number(s.area_mm2 !== null ? s.area_mm2 : s.volume_mm3, 0),
        number(s.uncertainty_mean, 4), number(s.uncertainty_max, 4)])));
    const facts = [`mode: ${c.mode}`, `check: ${c.verdict}`, `mean uncertainty: ${number(c.uncertainty, 4)}`];
    if (c.score !== null) facts.push(`quality score: ${number(c.score, 3)}`);
    facts.push(`scan: ${c.path || "not recorded"}`);
    if (c.series) facts.push(`series: ${c.series}`);  // the DICOM series read, of a folder holding several
    parts.push(list(facts.concat(c.reasons.map((reason) => `reason: ${reason}`))));
    const naming = c.levels || {};
    if (naming.named_from) {
      parts.push(list([`named from the ${naming.named_from}` +
        (naming.doubtful ? `; doubtful: ${text(naming.reason)}` : "")]));
    }
    // a measure with the range it spans over the confident and the generous pixels, as the report gives it
    const spread = (entry) => (entry.uncertainty && typeof entry.uncertainty === "object" ? entry.uncertainty : {});
    const ranged = (entry, key, digits) => {
      const range = spread(entry)[key];
      const shown = number(entry[key], digits);
      if (!Array.isArray(range) || entry[key] === null || entry[key] === undefined || range[0] === range[1]) return shown;
      return `${shown} (${number(range[0], digits)}–${number(range[1], digits)})`;
    };
    const edge = (entry) => number(spread(entry).boundary_entropy, 3);
    const name = (entry) => text(entry.level || "unnamed") + (entry.partial ? " (partial)" : "");
    if (c.discs.length) {
      parts.push(heading("Discs"));
      parts.push(table(["level", "height (mm)", "height index", "depth index", "signal ratio", "canal AP (mm)",
        "edge uncertainty"],
        c.discs.map((d) => [name(d), ranged(d, "height_mm", 1), number(d.height_index, 2), number(d.depth_index, 2),
          number(d.signal_ratio, 2), ranged(d, "canal_ap_mm", 1), edge(d)])));
    }
    if (c.vertebrae.length) {
      parts.push(heading("Vertebrae"));
      parts.push(table(["level", "height (mm)", "slip (mm)", "slip (%)", "edge uncertainty"],
        c.vertebrae.map((v) => [name(v), ranged(v, "height_mm", 1), ranged(v, "slip_mm", 1), number(v.slip_percent, 1),
          edge(v)])));
    }
    $("details").replaceChildren(...parts);
  }

  function heading(text) {
    const h = document.createElement("h3");
    h.textContent = text;
    return h;
  }

  function list(items) {
    const ul = document.createElement("ul");
    for (const item of items) {
      const li = document.createElement("li");
      li.textContent = item;
      ul.append(li);
    }
    return ul;
  }

  function table(header, body) {
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    for (const name of header) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = name;
      head.append(th);
    }
    const tb = t.createTBody();
    for (const values of body) {
      const tr = tb.insertRow();
      for (const value of values) tr.insertCell().textContent = value;
    }
    return t;
  }

  // ---- the cursor read-out: each slice's probe script holds a byte per pixel, label << 6 | uncertainty * 63 ----
  function requestProbe(c, slice) {
    const key = `${c.id}\u0000${slice}`;
    if (probes.has(key)) return;
    while (probes.size >= PROBES_KEPT) probes.delete(probes.keys().next().value);
    probes.set(key, "loading");
    const script = document.createElement("script");
    script.src = `${c.layers.dir}/probe-${slice}.js`;
    script.onload = () => script.remove();
    script.onerror = () => { probes.set(key, "missing"); script.remove(); };
    document.head.append(script);
  }

  async function inflate(payload) {
    const binary = window.atob(payload);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  window.spinesegdiffProbe = function (id, slice, rowCount, colCount, payload) {
    const key = `${id}\u0000${slice}`;
    if (typeof DecompressionStream === "undefined") { probes.set(key, "unsupported"); return; }
    inflate(payload).then(
      (bytes) => probes.set(key, { rows: rowCount, cols: colCount, bytes }),
      () => probes.set(key, "missing"));
  };

  function probeAt(row, col) {
    const c = cases.get(state.selected);
    if (!c || !c.layers) return null;
    const probe = probes.get(`${c.id}\u0000${currentSlice(c)}`);
    if (!probe || typeof probe === "string") return probe || null;
    if (row < 0 || col < 0 || row >= probe.rows || col >= probe.cols) return null;
    const byte = probe.bytes[row * probe.cols + col];
    return { row, col, label: byte >> 6, structure: structureNames[byte >> 6], uncertainty: (byte & 63) / 63 };
  }

  function readout(event) {
    const c = cases.get(state.selected);
    if (!c || !c.layers) return;
    const box = $("stack").getBoundingClientRect();
    const col = Math.floor(((event.clientX - box.left) / box.width) * c.layers.cols);
    const row = Math.floor(((event.clientY - box.top) / box.height) * c.layers.rows);
    if (row < 0 || col < 0 || row >= c.layers.rows || col >= c.layers.cols) {
      $("readout").textContent = "\u00a0";
      return;
    }
    const mm = `${((row + 0.5) * c.layers.heightMm / c.layers.rows).toFixed(1)} mm from the top, ` +
      `${((col + 0.5) * c.layers.widthMm / c.layers.cols).toFixed(1)} mm from the front`;
    const found = probeAt(row, col);
    if (found && typeof found === "object") {
      $("readout").textContent = `${found.structure}, uncertainty ${found.uncertainty.toFixed(2)} (${mm})`;
    } else {
      $("readout").textContent = `${found === "unsupported" ? "structure read-out needs a newer browser" :
        found === "missing" ? "no structure data for this slice" : "loading…"} (${mm})`;
    }
  }

  // ---- events ----
  function ownsKey(target, key) {
    // keys a focused control needs for itself: text fields all of them, sliders and radio buttons the arrows
    if (target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return true;
    if (!(target instanceof HTMLInputElement)) return false;
    if (["checkbox", "button", "file"].includes(target.type)) return false;
    if (["radio", "range"].includes(target.type)) return key.startsWith("Arrow");
    return true;
  }

  const keys = {
    j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
    ArrowRight: () => stepSlice(1), "]": () => stepSlice(1), ArrowLeft: () => stepSlice(-1), "[": () => stepSlice(-1),
    1: () => decide(state.selected, "accepted"), 2: () => decide(state.selected, "needs_correction"),
    3: () => decide(state.selected, "rejected"), 0: () => decide(state.selected, ""),
    n: () => $("note").focus(),
    i: () => toggle("show-image"), l: () => toggle("show-labels"), u: () => toggle("show-uncertainty"),
    "+": () => zoomAt(1.25), "=": () => zoomAt(1.25), "-": () => zoomAt(0.8), f: () => fitView(),
  };

  function toggle(id) {
    $(id).checked = !$(id).checked;
    applyLayerSettings();
  }

  document.addEventListener("keydown", (event) => {
    if (ownsKey(event.target, event.key)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || !keys[event.key]) return;
    if (!state.selected && event.key !== "j" && event.key !== "ArrowDown") return;
    event.preventDefault();
    keys[event.key]();
  });

  tbody.addEventListener("click", (event) => {
    const row = event.target.closest("tr");
    if (row) select(row.dataset.case);
  });
  for (const th of document.querySelectorAll("#cases thead th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.sort;
      const descending = th.getAttribute("aria-sort") === "ascending";
      sortBy(key, th.hasAttribute("aria-sort") ? descending : key === "uncertainty");
    });
  }
  $("filter").addEventListener("input", applyFilter);
  $("undecided-only").addEventListener("change", applyFilter);
  $("export").addEventListener("click", download);
  $("import").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    file.text().then(importCsv, () => setStatus("The file could not be read."));
    event.target.value = "";
  });
  for (const input of document.querySelectorAll('#triage input[name="decision"]')) {
    input.addEventListener("change", () => decide(state.selected, input.value));
  }
  $("note").addEventListener("input", () => decide(state.selected, undefined, $("note").value));
  for (const id of ["show-image", "show-labels", "show-uncertainty", "labels-opacity", "uncertainty-opacity"]) {
    $(id).addEventListener("input", applyLayerSettings);
  }
  $("slice").addEventListener("input", () => {
    const c = cases.get(state.selected);
    state.slices.set(c.id, c.layers.slices[Number($("slice").value)]);
    showSlice();
  });
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(0.8));
  $("zoom-fit").addEventListener("click", fitView);
  const stage = $("stage");
  stage.addEventListener("wheel", (event) => {
    const box = stage.getBoundingClientRect();
    if (event.ctrlKey || event.metaKey) zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
    else stepSlice(event.deltaY > 0 ? 1 : -1);
    event.preventDefault();
  }, { passive: false });
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX - view.panX, y: event.clientY - view.panY };
    stage.setPointerCapture(event.pointerId);
    stage.classList.add("panning");
  });
  stage.addEventListener("pointermove", (event) => {
    if (drag) {
      view.panX = event.clientX - drag.x;
      view.panY = event.clientY - drag.y;
      applyTransform();
    }
    readout(event);
  });
  const endDrag = () => { drag = null; stage.classList.remove("panning"); };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  window.addEventListener("resize", fitView);

  for (const id of rows.keys()) showDecision(id);
  updateProgress();
  if (tbody.rows.length) select(tbody.rows[0].dataset.case);
  window.spinesegdiffReview = { exportCsv, importCsv, select, decide, probeAt, sortBy, selected: () => state.selected, ready: true };
})();
