// Pool-mode adapter around the peer's stand-in workflow (the same work the Node
// peers do per request): tsbridge's worker host calls default(params, ctx).
import { runWorkflow } from './trivial-workflow';

export default async function (
  params: Record<string, unknown>,
  ctx: { workflow?: string; progress: (c: number, t: number, m: string) => void },
) {
  return runWorkflow(ctx.workflow ?? 'video-generation', params, (i, n, m) => ctx.progress(i, n, m));
}
