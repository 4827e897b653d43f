// What a browser page ships when it imports @receipts/sdk: bundles two pages
// with esbuild (the browser entry as consumers resolve it, minified, tree
// shaken) and prints each bundle's size, raw and gzipped.
//
//   mark-delivered  imports only createReceiptsConnection and markDelivered
//   whole client    createReceiptsClient and createReceiptState
//
// Exits 1 unless the mark-delivered page is clearly smaller: at least
// MIN_SAVING gzipped bytes less than the whole client. What both pages share
// (the protobuf-es runtime, the gRPC-web transport, the connection) does not
// change that margin; code that runs at module load, or that every call
// imports, shrinks it (before the per-call functions it was 0.7 KB). Needs
// dist/ (`npm run build`). Usage: node scripts/bundle-size.mjs
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const sdk = fileURLToPath(new URL("..", import.meta.url));

/** Gzipped bytes the mark-delivered page must ship less than the whole client (4.3 KB today). */
const MIN_SAVING = 2500;

const pages = {
  "mark-delivered": `
    import { createReceiptsConnection, markDelivered } from "@receipts/sdk";
    const connection = createReceiptsConnection({ baseUrl: location.origin, token: () => sessionStorage.token });
    export const acknowledge = (ids) => markDelivered(connection, ids);
  `,
  "whole client": `
    import { createReceiptsClient, createReceiptState } from "@receipts/sdk";
    export const client = createReceiptsClient({ baseUrl: location.origin, token: () => sessionStorage.token });
    export const state = createReceiptState();
  `,
};

if (!existsSync(`${sdk}/dist/index.js`)) {
  console.error("bundle-size: dist/index.js is missing; run `npm run build` first");
  process.exit(1);
}

const sizes = {};
for (const [name, contents] of Object.entries(pages)) {
  const result = await build({
    stdin: { contents, resolveDir: sdk, sourcefile: `${name}.js`, loader: "js" },
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "error",
  });
  const code = result.outputFiles[0].contents;
  sizes[name] = { raw: code.length, gzip: gzipSync(code, { level: 9 }).length };
}

const kb = (n) => `${(n / 1000).toFixed(1)} KB`;
for (const [name, s] of Object.entries(sizes)) {
  console.log(`${name.padEnd(15)} ${kb(s.raw).padStart(9)} raw  ${kb(s.gzip).padStart(8)} gzipped`);
}
const saving = sizes["whole client"].gzip - sizes["mark-delivered"].gzip;
if (saving < MIN_SAVING) {
  console.error(
    `bundle-size: the mark-delivered page ships only ${kb(saving)} gzipped less than the whole client (at least ${kb(MIN_SAVING)} expected): does something run at module load, or does every call import the subscription, state or read marker?`,
  );
  process.exit(1);
}
console.log(`mark-delivered ships ${kb(saving)} gzipped less than the whole client (at least ${kb(MIN_SAVING)} required)`);
