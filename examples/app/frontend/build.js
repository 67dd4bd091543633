#!/usr/bin/env node
// Build the static site into dist/ with nothing but Node.js (no npm packages):
// HTML, CSS and JS get a conservative minification (comments and blank space
// removed), every other file (images, fonts) is copied byte for byte, and
// dist/asset-manifest.json lists every output file with its SHA-256.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const srcDir = path.join(__dirname, 'src');
const outDir = path.join(__dirname, process.env.FRONTEND_OUT_DIR || 'dist');

function minifyCss(text) {
  return text
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\s+/g, ' ')
    .replace(/\s*([{};:,>])\s*/g, '$1')
    .replace(/;}/g, '}')
    .trim() + '\n';
}

function minifyJs(text) {
  // Line-based on purpose: drops whole-line // comments, indentation and blank
  // lines only, so string contents are never touched.
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('//'))
    .join('\n') + '\n';
}

function minifyHtml(text) {
  return text
    .replace(/<!--[\s\S]*?-->/g, '')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
    .join('\n') + '\n';
}

const transforms = { '.css': minifyCss, '.js': minifyJs, '.html': minifyHtml };

function walk(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? walk(full) : [full];
  });
}

fs.rmSync(outDir, { recursive: true, force: true });
const manifest = {};
for (const file of walk(srcDir).sort()) {
  const rel = path.relative(srcDir, file);
  const target = path.join(outDir, rel);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const transform = transforms[path.extname(file)];
  const data = transform ? Buffer.from(transform(fs.readFileSync(file, 'utf8')), 'utf8') : fs.readFileSync(file);
  fs.writeFileSync(target, data);
  manifest[rel.split(path.sep).join('/')] = crypto.createHash('sha256').update(data).digest('hex');
  console.log('built ' + rel + ' (' + data.length + ' bytes)');
}
fs.writeFileSync(path.join(outDir, 'asset-manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log('wrote ' + Object.keys(manifest).length + ' assets to ' + outDir);
