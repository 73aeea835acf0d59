// Validates a .glb with the Khronos glTF validator: node tools/validate_gltf.js FILE
// prints the validator's report (JSON) and exits 1 when it lists errors.
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
  uri: path.basename(file),
  maxIssues: 100,
  externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri}: a glb is self-contained`)),
}).then((report) => {
  console.log(JSON.stringify(report, null, 1));
  process.exit(report.issues.numErrors > 0 ? 1 : 0);
}, (err) => {
  console.error(`validator failed: ${err}`);
  process.exit(2);
});
