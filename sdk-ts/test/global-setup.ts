// One receiptd for the whole run; tests that stop a server start their own.
import type { TestProject } from "vitest/node";
import { startReceiptd } from "./receiptd.js";

declare module "vitest" {
  export interface ProvidedContext {
    baseUrl: string;
  }
}

export default async function setup(project: TestProject) {
  const server = await startReceiptd();
  project.provide("baseUrl", server.baseUrl);
  return async () => {
    await server.stop();
  };
}
