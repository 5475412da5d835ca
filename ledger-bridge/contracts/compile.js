#!/usr/bin/env node
// Compiles src/*.sol with the pinned solc-js (its compiler is bundled in the
// npm package: nothing is downloaded) and writes one artifact per contract,
// { abi, bytecode, deployedBytecode }, to ../artifacts/, plus build.json
// (compiler, settings, source hashes).
//
//   node compile.js            write the artifacts
//   node compile.js --check    compile and fail if the committed artifacts differ
//   node compile.js --out DIR  write them to DIR instead
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = __dirname;
const CONTRACTS = ['CohortAccess', 'PatientRecords', 'ResearchStudy', 'Appointments'];
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

function parseArgs(argv) {
  const args = { check: false, out: path.join(ROOT, '..', 'artifacts') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--check') args.check = true;
    else if (argv[i] === '--out' && i + 1 < argv.length) args.out = path.resolve(argv[++i]);
    else {
      console.error(`compile.js: unknown argument ${argv[i]} (expected --check or --out DIR)`);
      process.exit(2);
    }
  }
  return args;
}

function findImports(importPath) {
  const file = path.join(ROOT, 'node_modules', importPath);
  if (fs.existsSync(file)) return { contents: fs.readFileSync(file, 'utf8') };
  return { error: `${importPath} not found under node_modules (run \`npm ci\` in ${ROOT})` };
}

function compile() {
  const sources = {};
  for (const name of CONTRACTS) {
    const key = `src/${name}.sol`;
    sources[key] = { content: fs.readFileSync(path.join(ROOT, key), 'utf8') };
  }
  const output = JSON.parse(solc.compile(JSON.stringify({ language: 'Solidity', sources, settings: SETTINGS }),
    { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) {
    if (e.severity === 'error' || !/Transient storage/.test(e.message)) console.error(e.formattedMessage || e.message);
  }
  if (errors.length > 0) process.exit(1);

  const files = {};
  for (const name of CONTRACTS) {
    const c = output.contracts[`src/${name}.sol`][name];
    const artifact = { abi: c.abi, bytecode: '0x' + c.evm.bytecode.object, deployedBytecode: '0x' + c.evm.deployedBytecode.object };
    files[`${name}.json`] = JSON.stringify(artifact, null, 1) + '\n';
  }
  const hashes = {};
  for (const [key, { content }] of Object.entries(sources)) {
    hashes[key] = crypto.createHash('sha256').update(content).digest('hex');
  }
  const openzeppelin = require(path.join(ROOT, 'node_modules', '@openzeppelin', 'contracts', 'package.json')).version;
  files['build.json'] = JSON.stringify({ compiler: solc.version(), openzeppelin, settings: SETTINGS, sources: hashes }, null, 1) + '\n';
  return files;
}

const args = parseArgs(process.argv.slice(2));
const files = compile();
if (args.check) {
  const stale = Object.keys(files).filter((f) => {
    const committed = path.join(args.out, f);
    return !fs.existsSync(committed) || fs.readFileSync(committed, 'utf8') !== files[f];
  });
  if (stale.length > 0) {
    console.error(`artifacts differ from the sources: ${stale.join(', ')} (run \`node compile.js\` and commit ../artifacts)`);
    process.exit(1);
  }
  console.log(`artifacts match the sources (${Object.keys(files).length} files, ${solc.version()})`);
} else {
  fs.mkdirSync(args.out, { recursive: true });
  for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(args.out, f), text);
  for (const name of CONTRACTS) {
    const a = JSON.parse(files[`${name}.json`]);
    console.log(`${name}: ${a.abi.length} ABI entries, ${(a.deployedBytecode.length - 2) / 2} bytes deployed`);
  }
}
