// Pool mode entry (SPEC §3): tsbridge's worker host loads this module once and
// calls a handler per job with (params, ctx), where ctx = { progress(current,
// total, message), log(level, message), signal: AbortSignal, workflow? }.
// Handlers check ctx.signal between steps and reject with an AbortError when
// the job is cancelled or times out. The workflow code is the same as the CLI's.
import {
  Params,
  WorkflowContext,
  WorkflowError,
  dataAnalysis as runDataAnalysis,
  imageProcessing as runImageProcessing,
  resolveWorkflowName,
  videoGeneration as runVideoGeneration,
  withDefaults,
  workflows,
} from './src';

export const dataAnalysis = (params: Params, ctx?: Partial<WorkflowContext>) => runDataAnalysis(params, withDefaults(ctx));
export const imageProcessing = (params: Params, ctx?: Partial<WorkflowContext>) =>
  runImageProcessing(params, withDefaults(ctx));
export const videoGeneration = (params: Params, ctx?: Partial<WorkflowContext>) =>
  runVideoGeneration(params, withDefaults(ctx));

/**
 * One handler for every workflow: picks it from ctx.workflow (set by the pool
 * host, e.g. "data-analysis-pooled") or else params.workflow, which is then
 * removed from the params passed on.
 */
export default async function omegaHandler(params: Params, ctx?: Partial<WorkflowContext>): Promise<unknown> {
  const { workflow: fromParams, ...rest } = params ?? {};
  const name = ctx?.workflow ?? fromParams;
  if (typeof name !== 'string' || !name) {
    throw new WorkflowError('no workflow named: set ctx.workflow or params.workflow');
  }
  return workflows[resolveWorkflowName(name)](rest, withDefaults(ctx));
}
