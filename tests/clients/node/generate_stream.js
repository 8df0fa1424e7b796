// Streams one generation from a pipeserve gateway, using only the .proto files.
// Usage: node generate_stream.js <gateway host:port> <model> <prompt> <max_new_tokens>
// Prints one JSON line per streamed message, so a test can check what arrived.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, model, prompt, maxNewTokens] = process.argv.slice(2);
const protoRoot = path.resolve(__dirname, "../../../protos");
const definition = protoLoader.loadSync("pipeserve/v1/generation.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const api = grpc.loadPackageDefinition(definition).pipeserve.v1;
const client = new api.GenerationService(target, grpc.credentials.createInsecure());

const call = client.GenerateStream(
  { model, prompt, parameters: { max_new_tokens: Number(maxNewTokens), do_sample: false } },
  { deadline: Date.now() + 60000 },
);
call.on("data", (message) => process.stdout.write(JSON.stringify(message) + "\n"));
call.on("error", (error) => {
  process.stderr.write(`error: ${grpc.status[error.code]}: ${error.details}\n`);
  process.exit(1);
});
call.on("end", () => client.close());
