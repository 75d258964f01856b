// Hand-rolled SVG map: equirectangular projection scaled by cos(latitude), districts,
// optional grid cells, devices as status-coloured circles, wheel zoom and drag pan.

import { s, clear } from "./dom.js";
import { t, pick, lang } from "./i18n.js";

export const AQI_COLOURS = ["#00E400", "#FFFF00", "#FF7E00", "#FF0000", "#99004C", "#7E0023"]; // HJ 633 levels 1..6
export const AQI_LABELS = {
  en: ["Excellent", "Good", "Lightly polluted", "Moderately polluted", "Heavily polluted", "Severely polluted"],
  zh: ["优", "良", "轻度污染", "中度污染", "重度污染", "严重污染"],
};
export const STATUS_COLOURS = {
  fresh: "#1f9d55",
  stale: "#e0a800",
  offline: "#6b7280",
  alerting: "#d62728",
  unknown: "#a0aec0",
};
/** Pollution sources (GET /api/v1/sources): the worst of their permit state wins. */
export const SOURCE_COLOURS = {
  exceeding: "#d62728", // an open permit or outage alert
  over_cap: "#ff7f0e", // today's load at or over a daily cap
  expired: "#7b1fa2", // the permit has expired
  no_permit: "#6b7280",
  ok: "#1f9d55",
};
const NO_DATA = "#d5dbe3";

/** The map state of one source item of GET /api/v1/sources. */
export function sourceStatus(item) {
  if (item?.open_alerts?.length) return "exceeding";
  if ((item?.loads_today ?? []).some((l) => (l.ratio ?? 0) >= 1)) return "over_cap";
  if (!item?.permit) return "no_permit";
  if (item.permit.status === "expired") return "expired";
  return "ok";
}
const W = 1000;
const DEFAULT_FRAME = [117.8, 24.3, 118.5, 25.0]; // city grid frame (geo/grid.py)

/** HJ 633 level (1..6) of an AQI value. */
export function aqiLevel(aqi) {
  if (aqi == null || !Number.isFinite(Number(aqi))) return null;
  const v = Number(aqi);
  if (v <= 50) return 1;
  if (v <= 100) return 2;
  if (v <= 150) return 3;
  if (v <= 200) return 4;
  if (v <= 300) return 5;
  return 6;
}

export function aqiColour(aqi, level, colour) {
  if (typeof colour === "string" && /^#[0-9a-fA-F]{6}$/.test(colour)) return colour;
  const lv = Number.isInteger(level) && level >= 1 && level <= 6 ? level : aqiLevel(aqi);
  return lv ? AQI_COLOURS[lv - 1] : NO_DATA;
}

function mix(a, b, f) {
  const pa = [1, 3, 5].map((i) => parseInt(a.slice(i, i + 2), 16));
  const pb = [1, 3, 5].map((i) => parseInt(b.slice(i, i + 2), 16));
  return "#" + pa.map((v, i) => Math.round(v + (pb[i] - v) * f).toString(16).padStart(2, "0")).join("");
}

/** Water share (0..1) at/better than target → red … green. */
export function waterColour(share) {
  if (share == null || !Number.isFinite(Number(share))) return NO_DATA;
  const f = Math.max(0, Math.min(1, Number(share)));
  return f < 0.5 ? mix("#d7301f", "#fdd835", f * 2) : mix("#fdd835", "#1a9850", (f - 0.5) * 2);
}

/** Open alerts count → white … dark red. */
export function alertsColour(n) {
  if (n == null || !Number.isFinite(Number(n))) return NO_DATA;
  const v = Number(n);
  if (v <= 0) return "#f1f5f9";
  return mix("#fde0dd", "#a50f15", Math.min(1, Math.log2(1 + v) / 4));
}

export function makeProjection(bbox) {
  const [minLon, minLat, maxLon, maxLat] = bbox;
  const k = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const pad = 0.04;
  const scale = W / (spanX * (1 + 2 * pad));
  const H = Math.round(spanY * (1 + 2 * pad) * scale);
  const ox = spanX * pad * scale;
  const oy = spanY * pad * scale;
  return {
    width: W,
    height: H,
    project(lon, lat) {
      return [ox + (lon - minLon) * k * scale, oy + (maxLat - lat) * scale];
    },
  };
}

function eachCoord(geom, fn) {
  if (!geom) return;
  const walk = (c) => (typeof c[0] === "number" ? fn(c[0], c[1]) : c.forEach(walk));
  if (geom.type === "GeometryCollection") geom.geometries.forEach((g) => eachCoord(g, fn));
  else if (Array.isArray(geom.coordinates)) walk(geom.coordinates);
}

export function bboxOf(features) {
  let b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const f of features) {
    eachCoord(f.geometry, (x, y) => {
      if (!Number.isFinite(x) || !Number.isFinite(y)) return;
      b = [Math.min(b[0], x), Math.min(b[1], y), Math.max(b[2], x), Math.max(b[3], y)];
    });
  }
  return Number.isFinite(b[0]) ? b : null;
}

function ringsOf(geom) {
  if (!geom) return [];
  if (geom.type === "Polygon") return geom.coordinates;
  if (geom.type === "MultiPolygon") return geom.coordinates.flat(1);
  return [];
}

export function pathOf(geom, proj) {
  const parts = [];
  for (const ring of ringsOf(geom)) {
    if (!ring.length) continue;
    parts.push(
      ring
        .map(([lon, lat], i) => {
          const [x, y] = proj.project(lon, lat);
          return `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
        })
        .join("") + "Z",
    );
  }
  return parts.join("");
}

function ringCentroid(geom) {
  // Centre of the bounding box of the largest ring: good enough to place a label.
  let best = null;
  let bestArea = -1;
  for (const ring of ringsOf(geom)) {
    const b = bboxOf([{ geometry: { type: "Polygon", coordinates: [ring] } }]);
    if (!b) continue;
    const area = (b[2] - b[0]) * (b[3] - b[1]);
    if (area > bestArea) {
      bestArea = area;
      best = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2];
    }
  }
  return best;
}

export function createMap(svg, { onDeviceClick } = {}) {
  const layers = {
    districts: s("g", { class: "layer-districts" }),
    grid: s("g", { class: "layer-grid" }),
    labels: s("g", { class: "layer-labels" }),
    devices: s("g", { class: "layer-devices" }),
    sources: s("g", { class: "layer-sources" }),
    // Air micro-stations: their own layer (they never set an area's AQI; docs/standards.md §3.6).
    micro: s("g", { class: "layer-micro" }),
  };
  clear(svg);
  svg.append(layers.districts, layers.grid, layers.labels, layers.micro, layers.devices, layers.sources);
  const state = {
    districts: [],
    grid: [],
    devices: [],
    shade: "aqi",
    alerting: new Set(),
    selected: null,
    proj: makeProjection(DEFAULT_FRAME),
    view: null, // [x, y, w, h]
    showGrid: false,
    sources: [],
    showSources: false,
  };

  function setView(v) {
    state.view = v;
    svg.setAttribute("viewBox", v.map((n) => n.toFixed(1)).join(" "));
    const zoom = state.proj.width / v[2];
    svg.style.setProperty("--zoom", String(zoom));
    const r = 7 / zoom;
    for (const c of svg.querySelectorAll(".layer-devices circle.device")) c.setAttribute("r", r.toFixed(2));
    for (const c of svg.querySelectorAll(".layer-micro circle.device")) c.setAttribute("r", (r * 0.7).toFixed(2));
    for (const c of svg.querySelectorAll("circle.halo")) c.setAttribute("r", (r * 1.9).toFixed(2));
    for (const el of layers.labels.querySelectorAll("text")) el.setAttribute("font-size", (20 / zoom).toFixed(1));
    if (state.showSources) renderSources();
  }

  function resetView() {
    setView([0, 0, state.proj.width, state.proj.height]);
  }

  function districtFill(p) {
    if (state.shade === "water") return waterColour(p.water_ok_share);
    if (state.shade === "alerts") return alertsColour(p.open_alerts);
    return aqiColour(p.aqi, p.aqi_level, p.aqi_colour);
  }

  function districtTitle(p) {
    const name = lang() === "zh" ? p.name_zh || p.name_en : p.name_en || p.name_zh;
    const parts = [name || p.code];
    if (p.aqi != null) parts.push(`AQI ${p.aqi}`);
    if (p.water_ok_share != null) parts.push(`${t("vitals.water")} ${Math.round(Number(p.water_ok_share) * 100)}%`);
    if (p.open_alerts != null) parts.push(`${t("vitals.alerts")} ${p.open_alerts}`);
    if (p.devices != null) parts.push(`${t("vitals.devices")} ${p.devices}`);
    return parts.join(" · ");
  }

  function renderDistricts() {
    clear(layers.districts);
    clear(layers.labels);
    for (const f of state.districts) {
      const p = f.properties || {};
      const d = pathOf(f.geometry, state.proj);
      if (!d) continue;
      layers.districts.append(
        s(
          "path",
          { class: "district", d, fill: districtFill(p), "fill-rule": "evenodd", dataset: { code: p.code ?? "" } },
          s("title", { text: districtTitle(p) }),
        ),
      );
      const lp = Array.isArray(p.label_point) ? p.label_point : ringCentroid(f.geometry);
      if (lp) {
        const [x, y] = state.proj.project(lp[0], lp[1]);
        const name = lang() === "zh" ? p.name_zh || p.name_en : (p.name_en || p.name_zh || "").replace(/ District$/, "");
        const label = p.aqi != null && state.shade === "aqi" ? `${name} ${p.aqi}` : name;
        layers.labels.append(s("text", { x: x.toFixed(1), y: y.toFixed(1), class: "district-label", text: label }));
      }
    }
  }

  function renderGrid() {
    clear(layers.grid);
    if (!state.showGrid) return;
    for (const f of state.grid) {
      const d = pathOf(f.geometry, state.proj);
      if (d) layers.grid.append(s("path", { class: "cell", d }, s("title", { text: f.properties?.code ?? "" })));
    }
  }

  function statusOf(p) {
    if (state.alerting.has(p.code)) return "alerting";
    return STATUS_COLOURS[p.status] ? p.status : "unknown";
  }

  // Markers are kept per device code and updated in place, so that a refresh never detaches the
  // element under the pointer (hover, click and keyboard focus survive live updates).
  const markers = new Map();

  function renderDevices() {
    const seen = new Set();
    const r = state.view ? 7 / (state.proj.width / state.view[2]) : 7;
    for (const f of state.devices) {
      const p = f.properties || {};
      const c = f.geometry?.type === "Point" ? f.geometry.coordinates : null;
      if (!c || !Number.isFinite(c[0]) || !Number.isFinite(c[1]) || !p.code || seen.has(p.code)) continue;
      seen.add(p.code);
      const [x, y] = state.proj.project(c[0], c[1]);
      const status = statusOf(p);
      let m = markers.get(p.code);
      if (!m) {
        const title = s("title");
        const dot = s("circle", { class: "device" }, title);
        const halo = s("circle", { class: "halo" });
        const g = s("g", { dataset: { code: p.code }, tabindex: 0, role: "button" }, halo, dot);
        g.addEventListener("keydown", (ev) => {
          if (ev.key === "Enter" || ev.key === " ") onDeviceClick?.(g.dataset.code);
        });
        m = { g, dot, halo, title };
        markers.set(p.code, m);
      }
      const micro = p.assessment === false;
      m.g.setAttribute("class", `device-marker status-${status}${micro ? " micro" : ""}${state.selected === p.code ? " selected" : ""}`);
      m.g.dataset.status = status;
      for (const el of [m.dot, m.halo]) {
        el.setAttribute("cx", x.toFixed(1));
        el.setAttribute("cy", y.toFixed(1));
      }
      m.dot.setAttribute("r", (micro ? r * 0.7 : r).toFixed(2));
      m.halo.setAttribute("r", (r * 1.9).toFixed(2));
      m.dot.setAttribute("fill", STATUS_COLOURS[status]);
      m.halo.style.display = status === "alerting" ? "" : "none";
      m.title.textContent = `${p.name || p.code} (${p.code}) — ${t(`status.${status}`)}`;
      const layer = micro ? layers.micro : layers.devices;
      if (m.g.parentNode !== layer) layer.append(m.g);
    }
    for (const [code, m] of markers) {
      if (!seen.has(code)) {
        m.g.remove();
        markers.delete(code);
      }
    }
  }

  // Sources are squares above the device circles, so a station and a source at one site both show.
  function renderSources() {
    clear(layers.sources);
    if (!state.showSources) return;
    const side = state.view ? 12 / (state.proj.width / state.view[2]) : 12;
    for (const item of state.sources) {
      if (!Number.isFinite(item.lon) || !Number.isFinite(item.lat)) continue;
      const [x, y] = state.proj.project(item.lon, item.lat);
      const status = sourceStatus(item);
      const loads = (item.loads_today ?? []).map((l) => `${l.metric} ${l.today_kg.toFixed(2)}/${l.day_cap_kg} kg`);
      const permit = item.permit ? `${item.permit.number} (${t(`sources.permit.${item.permit.status}`)})` : t("sources.permit.none");
      const lines = [`${item.name || item.code} (${item.code})`, `${t("sources.permit")}: ${permit}`];
      if (loads.length) lines.push(`${t("sources.load_today")}: ${loads.join(", ")}`);
      for (const a of item.open_alerts ?? []) lines.push(`⚠ ${a.rule}: ${a.message}`);
      const rect = s(
        "rect",
        {
          class: `source-marker source-${status}`,
          x: (x - side / 2).toFixed(1),
          y: (y - side / 2).toFixed(1),
          width: side.toFixed(2),
          height: side.toFixed(2),
          fill: SOURCE_COLOURS[status],
          dataset: { code: item.code, status },
          tabindex: 0,
          role: "button",
        },
        s("title", { text: lines.join("\n") }),
      );
      rect.addEventListener("click", () => onDeviceClick?.(item.code));
      layers.sources.append(rect);
    }
  }

  // --- pan / zoom --------------------------------------------------------------
  function toSvg(ev) {
    const rect = svg.getBoundingClientRect();
    const [vx, vy, vw, vh] = state.view;
    // preserveAspectRatio xMidYMid meet: one scale, centred.
    const sc = Math.min(rect.width / vw, rect.height / vh);
    const offX = (rect.width - vw * sc) / 2;
    const offY = (rect.height - vh * sc) / 2;
    return [vx + (ev.clientX - rect.left - offX) / sc, vy + (ev.clientY - rect.top - offY) / sc, sc];
  }

  svg.addEventListener(
    "wheel",
    (ev) => {
      ev.preventDefault();
      const [px, py] = toSvg(ev);
      const [vx, vy, vw, vh] = state.view;
      const f = Math.exp(Math.sign(ev.deltaY) * 0.18);
      const nw = Math.min(state.proj.width * 1.5, Math.max(state.proj.width / 40, vw * f));
      const g = nw / vw;
      setView([px - (px - vx) * g, py - (py - vy) * g, vw * g, vh * g]);
    },
    { passive: false },
  );

  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    const [, , sc] = toSvg(ev);
    drag = { x: ev.clientX, y: ev.clientY, view: state.view.slice(), sc, moved: false, target: ev.target };
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const dx = ev.clientX - drag.x;
    const dy = ev.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    if (!drag.moved) {
      drag.moved = true;
      svg.setPointerCapture(ev.pointerId);
      svg.classList.add("dragging");
    }
    const [vx, vy, vw, vh] = drag.view;
    setView([vx - dx / drag.sc, vy - dy / drag.sc, vw, vh]);
  });
  const endDrag = (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    svg.classList.remove("dragging");
    if (svg.hasPointerCapture?.(ev.pointerId)) svg.releasePointerCapture(ev.pointerId);
    if (!d.moved && ev.type === "pointerup") {
      const marker = d.target instanceof Element ? d.target.closest(".device-marker") : null;
      if (marker) onDeviceClick?.(marker.dataset.code);
    }
  };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);

  resetView();

  return {
    setDistricts(fc) {
      state.districts = Array.isArray(fc?.features) ? fc.features : [];
      const b = bboxOf(state.districts);
      const old = state.proj;
      state.proj = makeProjection(b || DEFAULT_FRAME);
      if (!state.view || old.width !== state.proj.width || old.height !== state.proj.height) resetView();
      renderDistricts();
      renderGrid();
      renderDevices();
      renderSources();
    },
    setGrid(fc) {
      state.grid = Array.isArray(fc?.features) ? fc.features : [];
      renderGrid();
    },
    showGrid(on) {
      state.showGrid = on;
      renderGrid();
    },
    setDevices(fc) {
      state.devices = Array.isArray(fc?.features) ? fc.features : [];
      renderDevices();
    },
    showMicro(on) {
      layers.micro.style.display = on ? "" : "none";
    },
    setSources(items) {
      state.sources = Array.isArray(items) ? items : [];
      renderSources();
    },
    showSources(on) {
      state.showSources = on;
      renderSources();
    },
    setShade(mode) {
      state.shade = mode;
      renderDistricts();
    },
    setAlerting(codes) {
      state.alerting = new Set(codes);
      renderDevices();
    },
    select(code) {
      state.selected = code;
      renderDevices();
    },
    relabel() {
      renderDistricts();
      renderDevices();
    },
    resetView,
    deviceCount() {
      return state.devices.length;
    },
    get shade() {
      return state.shade;
    },
  };
}

/** Legend entries for the current shading mode. */
export function shadeLegend(mode) {
  if (mode === "water") {
    return [0, 0.25, 0.5, 0.75, 1].map((f) => ({ colour: waterColour(f), label: `${Math.round(f * 100)}%` }));
  }
  if (mode === "alerts") {
    return [0, 1, 3, 7, 15].map((n) => ({ colour: alertsColour(n), label: n === 15 ? "15+" : String(n) }));
  }
  const labels = AQI_LABELS[lang()] || AQI_LABELS.en;
  return AQI_COLOURS.map((c, i) => ({ colour: c, label: labels[i] }));
}

export { pick };
