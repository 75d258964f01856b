// A small SVG line chart: one metric over a time range, gaps broken, min/max labelled.

import { s } from "./dom.js";
import { fmtTime } from "./i18n.js";

const W = 320;
const H = 96;
const PAD = { l: 50, r: 10, t: 8, b: 18 };

function fmtNum(v, span) {
  // Enough decimals to tell the axis ends apart.
  const digits = span >= 20 ? 0 : span >= 2 ? 1 : span >= 0.2 ? 2 : 3;
  return v.toFixed(digits);
}

/**
 * points: [{t: epoch ms, v: number}] sorted by t; from/to: epoch ms of the range.
 * Returns an <svg class="chart"> whose line path has data-points = the number of points drawn.
 */
export function lineChart(points, { from, to, gapMs = 20 * 60 * 1000 } = {}) {
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img"});
  const pts = points.filter((p) => Number.isFinite(p.t) && Number.isFinite(p.v));
  const hi = to ?? (pts.length ? pts[pts.length - 1].t : 1);
  const lo = Math.min(from ?? (pts.length ? pts[0].t : 0), hi - 60_000); // at least a minute wide
  const withDate = hi - lo > 12 * 3600 * 1000;
  let vmin = Math.min(...pts.map((p) => p.v));
  let vmax = Math.max(...pts.map((p) => p.v));
  if (!pts.length) {
    vmin = 0;
    vmax = 1;
  }
  if (vmax - vmin < 1e-9) {
    vmin -= 1;
    vmax += 1;
  }
  const x = (tt) => PAD.l + ((tt - lo) / Math.max(hi - lo, 1)) * (W - PAD.l - PAD.r);
  const y = (v) => PAD.t + (1 - (v - vmin) / (vmax - vmin)) * (H - PAD.t - PAD.b);

  svg.append(
    s("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b }),
    s("line", { class: "axis", x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b }),
    s("text", { class: "tick", x: PAD.l - 4, y: PAD.t + 8, "text-anchor": "end", text: fmtNum(vmax, vmax - vmin) }),
    s("text", { class: "tick", x: PAD.l - 4, y: H - PAD.b, "text-anchor": "end", text: fmtNum(vmin, vmax - vmin) }),
    s("text", { class: "tick", x: PAD.l, y: H - 4, "text-anchor": "start", text: fmtTime(new Date(lo).toISOString(), withDate) }),
    s("text", { class: "tick", x: W - PAD.r, y: H - 4, "text-anchor": "end", text: fmtTime(new Date(hi).toISOString(), withDate) }),
  );

  let d = "";
  let prev = null;
  for (const p of pts) {
    const cmd = prev === null || p.t - prev > gapMs ? "M" : "L";
    d += `${cmd}${x(p.t).toFixed(1)} ${y(p.v).toFixed(1)}`;
    prev = p.t;
  }
  if (pts.length) {
    svg.append(s("path", { class: "line", d, dataset: { points: String(pts.length) } }));
    // Isolated points (and the last one) as dots so single readings are visible.
    const last = pts[pts.length - 1];
    svg.append(s("circle", { class: "dot", cx: x(last.t).toFixed(1), cy: y(last.v).toFixed(1), r: 2.5 }));
    if (pts.length === 1) svg.querySelector("path.line").setAttribute("d", `${d}h0.01`);
  }
  return svg;
}
