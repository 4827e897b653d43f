import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// @receipts/sdk is linked from ../../sdk-ts (its built dist/); the dev server
// may serve files from there.
export default defineConfig({
  server: {
    fs: { allow: [".", fileURLToPath(new URL("../../sdk-ts", import.meta.url))] },
  },
  build: { target: "es2022" },
});
