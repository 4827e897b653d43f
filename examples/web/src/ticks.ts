// Tick icons as inline SVG: they look the same in every browser, with or
// without a font that has ✓ or an emoji clock (Debian's Chromium has no emoji
// font, so "🕓" was a box). Strokes use currentColor, so CSS colours them.
import type { Tick } from "@receipts/sdk";

/** What a sender's message row shows: the SDK's tick, or the page's own send states. */
export type RowState = Tick | "pending" | "failed";

const SVG = "http://www.w3.org/2000/svg";

/** One stroke per check: a short down-stroke and a long up-stroke. */
const CHECK = (dx: number) => `M${2 + dx} 9.5l3.5 3.5L${13 + dx} 4`;

const PATHS: Record<RowState, string[]> = {
  pending: ["M9 2a6.5 6.5 0 1 0 0.01 0", "M9 5v3.5l2.5 1.5"], // a clock
  sent: [CHECK(2)],
  delivered: [CHECK(0), CHECK(6)],
  read: [CHECK(0), CHECK(6)],
  failed: ["M9 2a6.5 6.5 0 1 0 0.01 0", "M9 5v4", "M9 11.6v0.4"], // a circled "!"
};

/** Words for screen readers, tooltips and the legend. */
export const LABELS: Record<RowState, string> = {
  pending: "sending",
  sent: "sent",
  delivered: "delivered",
  read: "read",
  failed: "not sent",
};

/** The icon of a state: a 22×16 SVG whose strokes follow the text colour. */
export function tickIcon(state: RowState): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 22 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "tick-icon");
  for (const d of PATHS[state]) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}
