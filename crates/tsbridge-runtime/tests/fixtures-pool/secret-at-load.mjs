// A pool-mode module that fails to load, and says the workflow's secret
// (API_SECRET in its environment) in the error: the pool must report it
// masked.
throw new Error(`cannot start with key ${process.env.API_SECRET}`);
