// The benchmark's trivial TypeScript handler: returns its params.
export default async function trivial(params: Record<string, unknown>): Promise<Record<string, unknown>> {
  return params;
}
