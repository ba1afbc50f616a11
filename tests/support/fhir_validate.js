// An R4 validator for the test EHR (tests/support/fhir_receiver.py): npm's `fhir` package (FHIR.js), independent
// of the Python code. One JSON resource per input line, one JSON answer per output line: {valid, messages}.
const readline = require('readline');
const {Fhir} = require('fhir');
const fhir = new Fhir();  // R4 structure definitions and value sets shipped with the package
const rl = readline.createInterface({input: process.stdin, terminal: false});
rl.on('line', (line) => {
  let answer;
  try {
    answer = fhir.validate(JSON.parse(line));
  } catch (err) {
    answer = {valid: false, messages: [{severity: 'error', message: String(err)}]};
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
});
