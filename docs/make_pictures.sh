#!/bin/sh
# Remake the pictures of docs/pictures.md (run from the repository root).
# The photos are scikit-image's sample images; scikit-image is only needed to have them:
#   pip install --no-deps --target /tmp/skimage scikit-image && PHOTOS=/tmp/skimage/skimage/data sh docs/make_pictures.sh
# The weights are seeded random ones (--random-weights): no ImageNet weights were at hand.
set -e
PHOTOS=${PHOTOS:?set PHOTOS to the scikit-image data folder with chelsea.png and astronaut.png}
fastalex show filters --variant original --random-weights -o docs/filters.png
fastalex show activations "$PHOTOS/chelsea.png" --variant torchvision --layer features.2 --random-weights -o docs/activations.png
fastalex explain "$PHOTOS/astronaut.png" --variant torchvision --random-weights -o docs/explain.png
fastalex profile --variant torchvision --backend all --repeat 15 --plot docs/profile.png
