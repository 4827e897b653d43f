// Node only (src/node.ts): which errors are TLS certificate failures, by the
// codes Node and OpenSSL give them. A certificate failure is permanent, so it
// must not pass for a broken connection that a retry could mend. Kept out of
// src/errors.ts so that browser bundles, where fetch never says why a
// connection failed, do not ship these lists.
import type { TlsFailure } from "./errors.js";

/**
 * Node's codes for a server certificate it does not accept: OpenSSL's
 * verification results as Node names them, and a host name the certificate
 * does not cover.
 */
const CERT_VERIFY_CODES: ReadonlySet<string> = new Set([
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "ERROR_IN_CERT_NOT_BEFORE_FIELD",
  "ERROR_IN_CERT_NOT_AFTER_FIELD",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "CERT_CHAIN_TOO_LONG",
  "CERT_REVOKED",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/**
 * OpenSSL's codes (as Node names them) for a TLS alert about a certificate:
 * mostly the server refusing ours under mutual TLS (none sent, not from a CA
 * it trusts, expired).
 */
const CERT_ALERT_CODE = new RegExp(
  "^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_(BAD_CERTIFICATE|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED" +
    "|CERTIFICATE_EXPIRED|CERTIFICATE_UNKNOWN|UNKNOWN_CA|CERTIFICATE_REQUIRED)$",
);

/**
 * The certificate failure in an error's `cause` chain (connect-node keeps
 * Node's TLS error as the `ConnectError`'s cause; Node's `fetch` nests it one
 * deeper), if there is one.
 */
export function tlsFailureOf(error: unknown): TlsFailure | undefined {
  // Bounded: a cause chain may be long or even a cycle.
  for (let e = error, depth = 0; typeof e === "object" && e !== null && depth < 8; depth++) {
    const { code, message, reason } = e as { code?: unknown; message?: unknown; reason?: unknown };
    if (typeof code === "string") {
      if (CERT_VERIFY_CODES.has(code)) {
        return { code, reason: typeof message === "string" ? message : code };
      }
      if (CERT_ALERT_CODE.test(code)) {
        // OpenSSL's message is a whole error line; `reason` is its gist.
        return { code, reason: typeof reason === "string" ? reason : code };
      }
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
