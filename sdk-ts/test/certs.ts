// Test certificates, made at test time (no key is committed): CAs, server
// certificates and client certificates as receiptd's rustls (webpki) accepts
// them — X.509 v3, RSA 2048 with SHA-256, key identifiers, a validity of one
// hour back to one day ahead. Keys come from Node's crypto; node-forge builds
// and signs the certificates (Node has no X.509 builder).
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import forge from "node-forge";

/** A certificate and its private key, as PEM (the key PKCS#8, "BEGIN PRIVATE KEY"). */
export interface Pem {
  cert: string;
  key: string;
}

/** A CA that issues certificates. */
export interface Ca extends Pem {
  issue(options: IssueOptions): Pem;
}

export interface IssueOptions {
  commonName: string;
  /** `serverAuth` for a server, `clientAuth` for a client. */
  usage: "serverAuth" | "clientAuth";
  /** Subject alternative names: IP addresses and DNS names. */
  ips?: string[];
  dnsNames?: string[];
}

/** A new self-signed CA. */
export function createCa(commonName: string): Ca {
  const keys = rsaKeys();
  const cert = newCert(keys.publicKey, commonName);
  cert.setIssuer(cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  const keyId = cert.generateSubjectKeyIdentifier().getBytes();
  return {
    cert: forge.pki.certificateToPem(cert),
    key: keys.pem,
    issue(options) {
      const leafKeys = rsaKeys();
      const leaf = newCert(leafKeys.publicKey, options.commonName);
      leaf.setIssuer(cert.subject.attributes);
      const altNames = [
        ...(options.dnsNames ?? []).map((value) => ({ type: 2, value })),
        ...(options.ips ?? []).map((ip) => ({ type: 7, ip })),
      ];
      leaf.setExtensions([
        { name: "basicConstraints", cA: false, critical: true },
        { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
        { name: "extKeyUsage", [options.usage]: true },
        ...(altNames.length > 0 ? [{ name: "subjectAltName", altNames }] : []),
        { name: "subjectKeyIdentifier" },
        { name: "authorityKeyIdentifier", keyIdentifier: keyId },
      ]);
      leaf.sign(keys.privateKey, forge.md.sha256.create());
      return { cert: forge.pki.certificateToPem(leaf), key: leafKeys.pem };
    },
  };
}

const written: string[] = [];

/** Writes PEM files to a new temporary directory and returns their paths, by name. */
export function writePemFiles<K extends string>(files: Record<K, string>): Record<K, string> {
  const dir = mkdtempSync(join(tmpdir(), "receipts-sdk-ts-tls-"));
  written.push(dir);
  const paths = {} as Record<K, string>;
  for (const name of Object.keys(files) as K[]) {
    paths[name] = join(dir, `${name}.pem`);
    writeFileSync(paths[name], files[name], { mode: 0o600 });
  }
  return paths;
}

/** Removes every directory `writePemFiles` made. */
export function removePemFiles(): void {
  for (const dir of written.splice(0)) {
    rmSync(dir, { recursive: true, force: true });
  }
}

function rsaKeys() {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  return {
    pem,
    privateKey: forge.pki.privateKeyFromPem(pem),
    publicKey: forge.pki.publicKeyFromPem(publicKey.export({ type: "spki", format: "pem" }).toString()),
  };
}

function newCert(publicKey: forge.pki.PublicKey, commonName: string): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // Positive (a first byte below 0x80) and unique.
  cert.serialNumber = `01${randomBytes(15).toString("hex")}`;
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 3600_000);
  cert.validity.notAfter = new Date(now + 86_400_000);
  cert.setSubject([{ name: "commonName", value: commonName }]);
  return cert;
}
