// Transpiled by the worker host while it loads, under tsx: see
// worker-host-warm.mts. Required and imported (each way is a service of its own).
const warmed: boolean = true;
export = warmed;
