// Transpiled by the worker host while it loads (js/worker-host.mjs,
// warmLoader): tsx starts an esbuild service on its first transform, one per
// module format and thread (this file: ESM; worker-host-warm.cts: CommonJS,
// required and imported). Started now, before the worker answers `ready`,
// they are the worker's own helpers; started inside a job, the per-job
// sweep would kill them as that job's strays.
export const warmed: boolean = true;
