// Small, explicit parameter readers with clear error messages. tsbridge also
// validates params against schemas/*.json before a job starts; these checks
// keep the app usable (and its errors readable) when it runs on its own.
import { Params, WorkflowError } from './context';

export function requireString(params: Params, key: string): string {
  const value = params[key];
  if (typeof value !== 'string' || value.length === 0) {
    throw new WorkflowError(`params.${key} is required and must be a non-empty string`);
  }
  return value;
}

export function optionalString(params: Params, key: string): string | undefined {
  return params[key] === undefined ? undefined : requireString(params, key);
}

export function optionalNumber(
  params: Params,
  key: string,
  { min = -Infinity, max = Infinity, integer = false } = {},
): number | undefined {
  const value = params[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new WorkflowError(`params.${key} must be a number`);
  }
  if (integer && !Number.isInteger(value)) throw new WorkflowError(`params.${key} must be an integer`);
  if (value < min || value > max) {
    throw new WorkflowError(`params.${key} must be between ${min} and ${max}`);
  }
  return value;
}

export function optionalStringArray(params: Params, key: string): string[] | undefined {
  const value = params[key];
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
    throw new WorkflowError(`params.${key} must be an array of strings`);
  }
  return value as string[];
}

/** The per-step slowdown every workflow accepts (default 0). */
export function delayMs(params: Params): number {
  return optionalNumber(params, 'delayMs', { min: 0, max: 600_000 }) ?? 0;
}
