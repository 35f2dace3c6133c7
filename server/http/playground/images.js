// Images as the API carries them (rows of values in [0, 1]: grey [H, W], or channel-last RGB
// [H, W, 3]) to and from canvases.

let shape = [28, 28]; // the picked model's image_shape, set by main.js

export function setShape(imageShape) {
  shape = imageShape.length === 1 ? [1, imageShape[0]] : imageShape;
}

function channels() {
  return shape.length === 3 ? shape[2] : 1;
}

export function inColour() {
  return channels() === 3;
}

// Values to 0..255 as `vae-client sample -o` writes them (clip, then round).
function byte(value) {
  return Math.round(Math.min(Math.max(value, 0), 1) * 255);
}

export function paint(canvas, row) {
  const [height, width] = shape;
  const depth = channels();
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (let i = 0; i < width * height; i += 1) {
    const [r, g, b] = depth === 3 ? [row[3 * i], row[3 * i + 1], row[3 * i + 2]] : [row[i], row[i], row[i]];
    pixels.data.set([byte(r), byte(g), byte(b), 255], 4 * i);
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

// A drawing (any size) as one row of the model's input: scaled down with smoothing, then its
// colour channels (a colour model) or their mean (a grey one), as the server's own picture
// reader does.
export function rowFrom(source) {
  const [height, width] = shape;
  const depth = channels();
  const small = document.createElement("canvas");
  small.width = width;
  small.height = height;
  const context = small.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, width, height);
  const { data } = context.getImageData(0, 0, width, height);
  const row = new Array(width * height * depth);
  for (let i = 0; i < width * height; i += 1) {
    const [r, g, b] = [data[4 * i], data[4 * i + 1], data[4 * i + 2]];
    if (depth === 3) {
      row[3 * i] = Number((r / 255).toFixed(4));
      row[3 * i + 1] = Number((g / 255).toFixed(4));
      row[3 * i + 2] = Number((b / 255).toFixed(4));
    } else {
      row[i] = Number(((r + g + b) / (3 * 255)).toFixed(4));
    }
  }
  return row;
}
