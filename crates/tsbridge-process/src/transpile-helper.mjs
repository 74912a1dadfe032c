// tsbridge transpile-cache builder (embedded in the binary; written into the
// private cache dir and run by node on a cache miss only).
//
//   node transpile-helper.mjs '<json request>'
//   request: { esbuild: "<abs path of esbuild/lib/main.js>", entry, outfile, metafile }
//
// Bundles `entry` like the esbuild CLI call it replaces (CommonJS for node,
// packages external, inline source map), and rewrites, per source file, the
// values that name the file's own location, so that the bundle (which lives
// in the cache dir) behaves as the original file would:
//
//   __dirname, import.meta.dirname    -> the original file's directory
//   __filename, import.meta.filename  -> the original file's path
//   import.meta.url                   -> the original file's file:// URL
//   require.resolve(x)                -> createRequire(<original file>).resolve(x)
//
// A per-file `var` line declares the values (only in files whose text uses
// one of them); a build-wide `define` points the free identifiers at those
// names, so each module's references bind to its own declaration (esbuild
// renames them apart when scope-hoisting). Bound names (a file's own
// `const __dirname = ...`) are left alone, as `define` only replaces free
// identifiers. The bundle also sets `process.argv[1]` to the entry, as node
// would for the original file (so `import.meta.url === pathToFileURL(argv[1])`
// main-module checks hold).
//
// Whatever else refers to the bundle's own location (`import.meta` used any
// other way, `import()` left unbundled, `require(<expression>)`) is found
// by tsbridge in the output and the entry is refused (run by tsx).
//
// Exit 0 when the bundle and the metafile are written; 1 with esbuild's
// messages on stderr otherwise.
import { createRequire } from 'node:module';
import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

const req = JSON.parse(process.argv[2]);
const esbuild = createRequire(import.meta.url)(req.esbuild);

const DIRNAME = '__tsbridge_dirname';
const FILENAME = '__tsbridge_filename';
const URL_ = '__tsbridge_url';
const REQUIRE = '__tsbridge_require';
const MARKERS = ['__dirname', '__filename', 'import.meta', 'require.resolve'];

const LOADERS = {
  '.ts': 'ts', '.mts': 'ts', '.cts': 'ts', '.tsx': 'tsx',
  '.js': 'js', '.mjs': 'js', '.cjs': 'js', '.jsx': 'jsx',
};

// Where the declarations go: after a BOM, a `#!` line and a leading
// "use strict" directive (which must stay first to count). On the same line
// as the code that follows, so line numbers (and the source map) hold.
const PROLOGUE = /^(\uFEFF?)(#![^\n]*\n)?((?:\s|\/\/[^\n]*\n|\/\*[\s\S]*?\*\/)*(['"])use strict\4;?)?/;

function rewrite(file, text) {
  if (!MARKERS.some((m) => text.includes(m))) return undefined;
  const decls = [
    `${DIRNAME} = ${JSON.stringify(path.dirname(file))}`,
    `${FILENAME} = ${JSON.stringify(file)}`,
    `${URL_} = ${JSON.stringify(pathToFileURL(file).href)}`,
  ];
  if (text.includes('require.resolve')) {
    decls.push(`${REQUIRE} = require("node:module").createRequire(${FILENAME})`);
  }
  const m = PROLOGUE.exec(text);
  const head = m ? m[0] : '';
  return `${head}var ${decls.join(', ')};${text.slice(head.length)}`;
}

const locationPlugin = {
  name: 'tsbridge-location',
  setup(build) {
    build.onLoad({ filter: /\.[cm]?[jt]sx?$/, namespace: 'file' }, async (args) => {
      const loader = LOADERS[path.extname(args.path)];
      if (!loader) return undefined;
      const text = await readFile(args.path, 'utf8');
      const contents = rewrite(args.path, text);
      return contents === undefined ? undefined : { contents, loader };
    });
  },
};

try {
  const result = await esbuild.build({
    entryPoints: [req.entry],
    absWorkingDir: '/',
    bundle: true,
    platform: 'node',
    format: 'cjs',
    packages: 'external',
    sourcemap: 'inline',
    logLevel: 'warning',
    outfile: req.outfile,
    metafile: true,
    write: true,
    banner: { js: `process.argv[1] = ${JSON.stringify(req.entry)};` },
    define: {
      __dirname: DIRNAME,
      __filename: FILENAME,
      'import.meta.dirname': DIRNAME,
      'import.meta.filename': FILENAME,
      'import.meta.url': URL_,
      'require.resolve': `${REQUIRE}.resolve`,
    },
    plugins: [locationPlugin],
  });
  await writeFile(req.metafile, JSON.stringify(result.metafile));
} catch (err) {
  // esbuild has printed its errors (logLevel); say something if it did not.
  if (!err || !Array.isArray(err.errors)) process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
}
