// Copy the vendored front-end files from node_modules into the analytics static dir.
// Run `npm ci && npm run vendor` after changing a pin in package.json; commit the result.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = join(root, "src", "analytics", "static", "analytics", "vendor");
const files = [
  ["chart.js", "dist/chart.umd.min.js", "chart.umd.min.js"],
  ["chart.js", "LICENSE.md", "chart.js.LICENSE.md"],
];
mkdirSync(target, { recursive: true });
for (const [pkg, source, name] of files) {
  const version = JSON.parse(readFileSync(join(root, "node_modules", pkg, "package.json"), "utf8")).version;
  let text = readFileSync(join(root, "node_modules", pkg, source), "utf8");
  // The source map is not vendored: drop its reference (collectstatic's manifest would
  // refuse a reference to a missing file, and browsers would ask for it).
  text = text.replace(/\n?\/\/# sourceMappingURL=\S+\s*$/, "\n");
  writeFileSync(join(target, name), text);
  console.log(`vendored ${pkg}@${version}: ${source} -> ${join("src/analytics/static/analytics/vendor", name)}`);
}
