// The workflow registry shared by main.ts (CLI) and handlers.ts (pool mode).
import { Params, Workflow, WorkflowContext, WorkflowError } from './context';
import { dataAnalysis } from './data-analysis';
import { imageProcessing } from './image-processing';
import { videoGeneration } from './video-generation';

export * from './context';
export { dataAnalysis, imageProcessing, videoGeneration };

export const workflows: Record<string, Workflow> = {
  'data-analysis': dataAnalysis,
  'image-processing': imageProcessing,
  'video-generation': videoGeneration,
};

/**
 * Maps a name to a registered workflow. Accepts the canonical kebab-case name,
 * camelCase (`dataAnalysis`), and a configured variant such as
 * `data-analysis-pooled` (any `<name>-<suffix>`).
 */
export function resolveWorkflowName(name: string): string {
  const kebab = name.replace(/([a-z0-9])([A-Z])/g, '$1-$2').replace(/_/g, '-').toLowerCase();
  const found = Object.keys(workflows).find((known) => kebab === known || kebab.startsWith(`${known}-`));
  if (!found) {
    throw new WorkflowError(`unknown workflow "${name}" (expected one of: ${Object.keys(workflows).join(', ')})`);
  }
  return found;
}

export function runWorkflow(name: string, params: Params, ctx: WorkflowContext): Promise<unknown> {
  return workflows[resolveWorkflowName(name)](params, ctx);
}
