// Images as the API carries them (rows of grey values in [0, 1]) to and from canvases.

let shape = [28, 28]; // the served model's image_shape, set from /v1/model by main.js

export function setShape(imageShape) {
  shape = imageShape.length === 2 ? imageShape : [1, imageShape[0]];
}

// Grey values to 0..255 as `vae-client sample -o` writes them (clip, then round).
export function paint(canvas, row) {
  const [height, width] = shape;
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let i = 0; i < width * height; i += 1) {
    const grey = Math.round(Math.min(Math.max(row[i], 0), 1) * 255);
    pixels.data.set([grey, grey, grey, 255], 4 * i);
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

export function tile(row, label, className = "tile") {
  const canvas = paint(document.createElement("canvas"), row);
  canvas.className = className;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  return canvas;
}

// A drawing (any size) as one row of the model's input: scaled down with smoothing, then the
// mean of its colour channels, as the server's own picture reader does.
export function rowFrom(source) {
  const [height, width] = shape;
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  const context = small.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, width, height);
  const { data } = context.getImageData(0, 0, width, height);
  const row = new Array(width * height);
  for (let i = 0; i < row.length; i += 1) {
    row[i] = Number(((data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / (3 * 255)).toFixed(4));
  }
  return row;
}
