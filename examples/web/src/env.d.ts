/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** receiptd's base URL, when the page has no `?server=` parameter. */
  readonly VITE_RECEIPTS_URL?: string;
}
