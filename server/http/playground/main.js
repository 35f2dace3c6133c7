// The playground: each panel is one module; this wires them to the model picked (panel.js).

import { quietly } from "./api.js";
import * as explore from "./explore.js";
import { setShape } from "./images.js";
import * as interpolate from "./interpolate.js";
import * as panel from "./panel.js";
import * as reconstruct from "./reconstruct.js";
import * as sample from "./sample.js";

async function main() {
  panel.start();
  const model = await panel.loadModel();
  setShape(model.image_shape);
  sample.start();
  sample.onPick((image) => quietly(() => interpolate.pick(image)));
  explore.start();
  explore.setModel(model);
  reconstruct.start();
  interpolate.start(reconstruct.latestMean);
}

// Without the model nothing else can start; the banner says why, and a reload tries again.
quietly(main);
