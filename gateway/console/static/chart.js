// Charts with uPlot (vendor/uPlot.iife.min.js, the global ``uPlot``): line charts of metrics by step, bar charts
// of totals by category. Each chart follows its container's width.

import { h } from "./dom.js";

export const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

function sized(container) {
  let plot = null;
  const width = () => Math.max(240, container.clientWidth - 4);
  const observer = new ResizeObserver(() => plot && plot.setSize({ width: width(), height: plot.height }));
  observer.observe(container);
  return {
    build(opts, data) {
      plot?.destroy();
      plot = new uPlot({ ...opts, width: width() }, data, container);
      return plot;
    },
    get plot() { return plot; },
    destroy() { observer.disconnect(); plot?.destroy(); },
  };
}

// A line chart: x = step; series = [{label, color}], points given with setData(xs, [ys…]) (null = no point).
export function lineChart(container, { title, series, height = 220, xLabel = "step" }) {
  const holder = sized(container);
  const opts = {
    title, height,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { size: 60 }],
    legend: { live: false },
    series: [{ label: xLabel }, ...series.map((s, i) => ({
      label: s.label, stroke: s.color || COLORS[i], width: 2, spanGaps: true, points: { show: true, size: 4 },
    }))],
  };
  let points = 0;
  return {
    setData(xs, ys) {
      points = xs.length;
      const data = [xs, ...ys];
      if (holder.plot) holder.plot.setData(data);
      else holder.build(opts, data);
      container.dataset.points = String(points);
    },
    get points() { return points; },
    destroy: () => holder.destroy(),
  };
}

// Grouped bars: labels along x, one bar per series in each group.
export function barChart(container, { title, labels, series, height = 240 }) {
  const holder = sized(container);
  const n = series.length;
  const groupWidth = 0.8;
  const xs = labels.map((_, i) => i);
  const offset = (i) => -groupWidth / 2 + (i * groupWidth) / n;
  const opts = {
    title, height,
    scales: { x: { time: false, range: [-0.6, Math.max(labels.length - 0.4, 0.6)] }, y: { range: (u, min, max) => [0, max * 1.1 || 1] } },
    axes: [
      { splits: () => xs, values: (u, splits) => splits.map((v) => shorten(labels[v] ?? "")), gap: 6, size: 40 },
      { size: 60 },
    ],
    series: [{ label: "" }, ...series.map((s, i) => ({
      label: s.label, fill: `${s.color || COLORS[i]}cc`, stroke: s.color || COLORS[i], width: 1,
      paths: groupedBar(offset(i), groupWidth / n), points: { show: false },
    }))],
    legend: { show: n > 1, live: false },
    cursor: { show: false },
  };
  holder.build(opts, [xs, ...series.map((s) => s.values)]);
  container.dataset.bars = String(labels.length);
  return { destroy: () => holder.destroy() };
}

function shorten(label) {
  return label.length > 18 ? `${label.slice(0, 8)}…${label.slice(-8)}` : label;
}

// A bar path builder drawing rectangles from 0 to each value at x + offset, width in x units.
function groupedBar(offset, width) {
  return (u, seriesIdx) => {
    const path = new Path2D();
    const xs = u.data[0], ys = u.data[seriesIdx];
    for (let i = 0; i < xs.length; i++) {
      if (ys[i] == null) continue;
      const left = u.valToPos(xs[i] + offset, "x", true);
      const right = u.valToPos(xs[i] + offset + width, "x", true);
      const top = u.valToPos(ys[i], "y", true);
      const bottom = u.valToPos(0, "y", true);
      path.rect(left + 1, top, Math.max(right - left - 2, 1), bottom - top);
    }
    return { stroke: path, fill: path };
  };
}

export function chartBox(label) {
  return h("figure", { class: "chart", role: "img", "aria-label": label });
}
