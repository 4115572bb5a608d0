// Validates AsyncAPI documents: the AsyncAPI Initiative's parser (@asyncapi/parser) checks the
// document against the specification's JSON Schema and its bindings' schemas, resolves every
// reference and runs its built-in rules; then every message example is validated against its
// message's payload and headers schemas with Ajv (the parser's 3.0 rules do not check examples).
// Usage: node check.mjs FILE...  Exits 1 on any error or warning (info lines are printed only).
//
// `asyncapi-latest-version` (an info: "3.1.0 is out") is left out: the document stays on 3.0.0,
// the version consumers' tools (generators, Studio, other languages' parsers) read most widely.
import { Parser, fromFile } from '@asyncapi/parser';
import Ajv from 'ajv';

const severities = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
let failed = false;

function exampleErrors(message) {
  const errors = [];
  const ajv = new Ajv({ allErrors: true, strict: false });
  const schemas = { payload: message.payload()?.json(), headers: message.headers()?.json() };
  for (const [i, example] of message.examples().all().entries()) {
    for (const part of ['payload', 'headers']) {
      const value = example[part]();
      if (value === undefined || schemas[part] === undefined) continue;
      const validate = ajv.compile(schemas[part]);
      if (!validate(value)) {
        for (const e of validate.errors) {
          errors.push(`message ${message.id()}, example ${example.name() ?? i}, ${part}${e.instancePath}: ${e.message}`);
        }
      }
    }
  }
  return errors;
}

for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  for (const d of diagnostics.filter((d) => d.code !== 'asyncapi-latest-version')) {
    const where = d.range ? `${file}:${d.range.start.line + 1}:${d.range.start.character + 1}` : file;
    const path = d.path && d.path.length ? ` (at ${d.path.join('.')})` : '';
    console.log(`${severities[d.severity] ?? d.severity} ${where} ${d.code}: ${d.message}${path}`);
  }
  const bad = diagnostics.filter((d) => d.severity <= 1).length;
  const examples = document ? document.messages().all().flatMap(exampleErrors) : [];
  for (const e of examples) console.log(`error ${file}: ${e}`);
  if (!document || bad + examples.length > 0) {
    failed = true;
    console.log(`FAIL ${file}: ${bad + examples.length} errors or warnings`);
  } else {
    const n = (c) => c.all().length;
    console.log(`ok   ${file}: AsyncAPI ${document.version()}, ${n(document.channels())} channels, ` +
      `${n(document.operations())} operations, ${n(document.messages())} messages, examples valid`);
  }
}
process.exit(failed ? 1 : 0);
