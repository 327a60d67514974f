// A small line chart on a canvas: one series per region, the last `span` seconds.

const COLORS = {us: "#2f6fde", eu: "#1a9a5a", ap: "#d2691e"};

export class LagChart {
  constructor(canvas, span = 60) {
    this.canvas = canvas;
    this.span = span;
    this.series = new Map(); // region -> [[time, ms]]
  }

  add(region, ms) {
    if (!this.series.has(region)) this.series.set(region, []);
    this.series.get(region).push([Date.now() / 1000, ms]);
  }

  draw() {
    const c = this.canvas, g = c.getContext("2d");
    const w = c.width, h = c.height, pad = 28;
    const now = Date.now() / 1000, from = now - this.span;
    for (const pts of this.series.values()) {
      while (pts.length && pts[0][0] < from) pts.shift();
    }
    let max = 10;
    for (const pts of this.series.values()) for (const [, v] of pts) max = Math.max(max, v);
    max = Math.ceil(max / 10) * 10;
    g.clearRect(0, 0, w, h);
    g.strokeStyle = "#ccc"; g.fillStyle = "#666"; g.font = "11px sans-serif";
    g.beginPath(); g.moveTo(pad, 4); g.lineTo(pad, h - pad); g.lineTo(w - 4, h - pad); g.stroke();
    g.fillText(`${max} ms`, 2, 12);
    g.fillText("0", pad - 10, h - pad);
    g.fillText(`-${this.span} s`, pad, h - 10);
    g.fillText("now", w - 26, h - 10);
    const x = (t) => pad + (t - from) / this.span * (w - pad - 4);
    const y = (v) => h - pad - v / max * (h - pad - 8);
    let i = 0;
    for (const [region, pts] of this.series) {
      g.strokeStyle = g.fillStyle = COLORS[region] || "#888";
      g.beginPath();
      pts.forEach(([t, v], k) => (k ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
      g.stroke();
      for (const [t, v] of pts) g.fillRect(x(t) - 1.5, y(v) - 1.5, 3, 3);
      g.fillText(region, w - 60 + 20 * i++, 12);
    }
  }
}
