"""fastalex.viz: kernel grids, feature-map grids and occlusion sensitivity, on small models
whose weights are set so the right picture is known in advance."""

import numpy as np
import pytest
from PIL import Image

from fastalex import viz
from fastalex.models import alexnet, build

WHITE = (255, 255, 255)


def tiny_spec(conv1_out=6, kernel=5):
    """A small conv net: 3x16x16 in, conv(kernel) -> ReLU -> conv 3x3 -> ReLU -> pool -> dense."""
    side = 16 - kernel + 1 - 2
    return {
        "variant": "tiny",
        "input_shape": (3, 16, 16),
        "preprocess": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        "layers": [
            ("features", [
                ("Conv2D", dict(in_channels=3, out_channels=conv1_out, kernel_size=kernel)), ("ReLU", {}),
                ("Conv2D", dict(in_channels=conv1_out, out_channels=5, kernel_size=3)), ("ReLU", {}),
            ]),
            ("flatten", ("Flatten", {})),
            ("classifier", [("Dense", dict(in_features=5 * side * side, out_features=4))]),
        ],
    }


def origin(i, cols, tile, gutter=viz.GUTTER):
    r, c = divmod(i, cols)
    return gutter + c * (tile + gutter), gutter + r * (tile + gutter)


def tile_pixels(img, i, cols, tile):
    x, y = origin(i, cols, tile)
    return np.asarray(img)[y:y + tile, x:x + tile]


# ----------------------------------------------------------------------------- grid rules

@pytest.mark.parametrize("n, shape", [(96, (8, 12)), (64, (8, 8)), (256, (16, 16)), (6, (2, 3)),
                                      (7, (3, 3)), (1, (1, 1)), (100, (10, 10)), (260, (13, 20))])
def test_grid_shape(n, shape):
    assert viz.grid_shape(n) == shape


@pytest.mark.parametrize("variant, n, k", [("original", 96, 11), ("torchvision", 64, 11)])
def test_first_layer_png_size_follows_the_grid_rule(variant, n, k, tmp_path):
    model = alexnet(variant, seed=None)  # zero weights: size only
    img = viz.filters(model)
    rows, cols = viz.grid_shape(n)
    scale = round(viz.FILTER_TILE / k)
    tile = k * scale
    assert (rows, cols) == ((8, 12) if n == 96 else (8, 8))
    grid_w, grid_h = cols * (tile + viz.GUTTER) + viz.GUTTER, rows * (tile + viz.GUTTER) + viz.GUTTER
    assert img.height == grid_h + viz.caption_height(1)
    assert img.width >= grid_w
    img.save(tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as back:
        assert back.size == img.size and back.mode == "RGB"
    bare = viz.filters(model, caption=False, scale=1)
    assert bare.size == (cols * (k + 1) + 1, rows * (k + 1) + 1)


def test_known_first_layer_kernels_show_in_the_right_tiles_and_colours():
    model = build(tiny_spec(conv1_out=6, kernel=5))
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    w[0] = 0.0
    w[0, 0] = 1.0                      # tile 0: pure red (input channel 0 is red)
    w[1] = 1.0
    w[1, :, :, :2] = -1.0              # tile 1: vertical edge, dark left two columns, light right
    w[4] = 0.0
    w[4, 2] = 0.3                      # tile 4: pure blue
    w[4, 2, 0, 0] = 0.6                # with one brighter pixel in its top-left corner
    model["features"][0].weight = w
    scale = 4
    img = viz.filters(model, scale=scale, caption=False)
    rows, cols = viz.grid_shape(6)
    tile = 5 * scale
    assert img.size == (cols * (tile + 1) + 1, rows * (tile + 1) + 1)
    red = tile_pixels(img, 0, cols, tile)
    assert (red == (255, 0, 0)).all()
    edge = tile_pixels(img, 1, cols, tile)
    assert (edge[:, :2 * scale] == 0).all()
    assert (edge[:, 2 * scale:] == 255).all()
    blue = tile_pixels(img, 4, cols, tile).astype(int)
    assert (blue[:scale, :scale] == (0, 0, 255)).all()              # the brightest pixel
    assert (blue[scale:, :, 2] == 128).all() and (blue[scale:, :, :2] == 0).all()   # the rest: half blue
    # gutters: the white frame and the lines between tiles
    a = np.asarray(img)
    assert (a[0] == WHITE).all() and (a[:, 0] == WHITE).all()
    assert (a[:, tile + 1] == WHITE).all() and (a[tile + 1, :] == WHITE).all()


def test_deeper_layer_is_grey_mean_tiles_or_capped_slices():
    model = build(tiny_spec())
    w = np.zeros((5, 6, 3, 3), np.float32)
    w[2, :, :, 1] = 1.0                          # kernel 2: a bright vertical line in every input
    model["features"][2].weight = w
    img = viz.filters(model, "features.2", scale=2, caption=False)
    rows, cols = viz.grid_shape(5)
    t = tile_pixels(img, 2, cols, 6)
    assert (t[..., 0] == t[..., 1]).all() and (t[..., 1] == t[..., 2]).all()   # grey
    assert (t[:, 2:4] == 255).all() and (t[:, :2] == 0).all() and (t[:, 4:] == 0).all()
    flat = tile_pixels(img, 0, cols, 6)
    assert (flat == 128).all()                  # a constant kernel is mid grey, not black
    with_caption = viz.filters(model, "features.2", scale=2)
    assert with_caption.height == img.height + viz.caption_height(2)

    per = viz.filters(model, "features.2", scale=1, per_input=True, caption=False)
    assert per.size == (6 * 4 + 1, 5 * 4 + 1)    # a row per output, a column per input
    capped = viz.filters(model, "features.2", scale=1, per_input=True, max_tiles=9)
    assert capped.height == 3 * 4 + 1 + viz.caption_height(2)  # 3 outputs x 3 inputs, and a note


def test_filters_refuses_layers_that_are_not_convolutions():
    model = build(tiny_spec())
    with pytest.raises(ValueError, match="features.1 is a ReLU, not a convolution.*features.0, features.2"):
        viz.filters(model, "features.1")
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        viz.filters(model, "nope")
    with pytest.raises(ValueError, match="scale must be a positive int"):
        viz.filters(model, scale=0)


# ----------------------------------------------------------------------------- activations

def test_activations_grid_with_the_photo_in_the_corner():
    model = build(tiny_spec())
    w = np.zeros((6, 3, 5, 5), np.float32)
    w[1, 0, 2, 2] = 1.0                            # channel 1: the red channel, shifted
    model["features"][0].weight = w
    model["features"][0].bias = np.array([0, 0, -5, 0, 0, 0], np.float32)  # channel 2: dead after ReLU
    photo = np.zeros((16, 16, 3), np.uint8)
    photo[:, 8:, 0] = 255                          # right half red
    img = viz.activations(model, photo, "features.1", scale=4, caption=False)
    tile = 12 * 4                                  # 12x12 maps
    rows, cols = viz.grid_shape(6 + 4)
    assert (rows, cols) == (2, 5)
    assert img.size == (cols * (tile + 1) + 1, rows * (tile + 1) + 1)
    a = np.asarray(img).astype(int)
    corner = a[1:2 * tile + 2, 1:2 * tile + 2]     # the photo over 2 x 2 cells
    assert corner[:, -5:, 0].min() > 200 and corner[:, -5:, 1].max() < 60   # red on the right
    assert corner[:, :5].max() < 60                                          # black on the left
    # cells around the 2x2 block, row-major: (0,2) (0,3) (0,4) (1,2) (1,3) (1,4)
    cells = [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]

    def cell(k):
        r, c = cells[k]
        return a[1 + r * (tile + 1):1 + r * (tile + 1) + tile, 1 + c * (tile + 1):1 + c * (tile + 1) + tile]

    red_map = cell(1)
    assert red_map[:, -4 * 4:].min() == 255      # layer maximum: white where the photo is red
    assert red_map[:, :4 * 4].max() == 0
    assert cell(2).max() == 0                    # the dead channel is black on the layer's scale
    per_channel = viz.activations(model, photo, "features.1", scale=4, normalize="channel", caption=False)
    assert per_channel.size == img.size


def test_activations_of_a_vector_layer_and_options():
    model = build(tiny_spec())
    img = viz.activations(model, np.zeros((16, 16, 3), np.uint8), "classifier.0", scale=3, caption=False)
    tile = 2 * 3                                  # 4 logits -> one 2x2 map
    assert img.size == (3 * (tile + 1) + 1, 2 * (tile + 1) + 1)
    few = viz.activations(model, np.zeros((16, 16, 3), np.uint8), "features.3", max_channels=2,
                          cmap="viridis", scale=1)
    assert few.height == 2 * (10 + 1) + 1 + viz.caption_height(1)   # grid_shape(2 + 4) == (2, 3)
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        viz.activations(model, np.zeros((16, 16, 3), np.uint8), "features.1", cmap="jet")
    with pytest.raises(ValueError, match="normalize must be"):
        viz.activations(model, np.zeros((16, 16, 3), np.uint8), "features.1", normalize="batch")


# ----------------------------------------------------------------------------- occlusion

def red_detector():
    """Class 1 = "there is red somewhere": mean of the red channel's ReLU over the image; class 0: 0.

    Translation invariant, so what the occlusion map finds comes from the photo alone."""
    spec = {
        "variant": "red", "input_shape": (3, 32, 32),
        "preprocess": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
        "layers": [
            ("features", [("Conv2D", dict(in_channels=3, out_channels=1, kernel_size=1)), ("ReLU", {})]),
            ("avgpool", ("AdaptiveAvgPool2D", dict(output_size=1))),
            ("flatten", ("Flatten", {})),
            ("classifier", [("Dense", dict(in_features=1, out_features=2))]),
        ],
    }
    model = build(spec)
    model["features"][0].weight = np.array([1, 0, 0], np.float32).reshape(1, 3, 1, 1)
    model["features"][0].bias = np.zeros(1, np.float32)
    model["classifier"][0].weight = np.array([[0.0], [50.0]], np.float32)
    model["classifier"][0].bias = np.array([0.0, -1.5], np.float32)
    return model


def red_square_photo():
    photo = np.full((32, 32, 3), 128, np.uint8)   # grey, and the only red in one 8x8 square
    photo[4:12, 20:28] = (255, 0, 0)
    return photo


def test_occlusion_finds_the_one_region_that_carries_the_signal(backend):
    model = red_detector()
    model.backend = backend
    x, _ = viz.prepare(model, red_square_photo())
    occ = viz.occlusion(model, x, patch=8, stride=4, batch_size=10)
    assert occ.target == 1 and occ.probability > 0.8
    assert occ.ys == occ.xs == (0, 4, 8, 12, 16, 20, 24)
    assert occ.heatmap.shape == (32, 32) and occ.drops.shape == (7, 7)
    y, x0 = np.unravel_index(np.argmax(occ.heatmap), occ.heatmap.shape)
    assert 4 <= y < 12 and 20 <= x0 < 28
    j, i = np.unravel_index(np.argmax(occ.drops), occ.drops.shape)
    assert (occ.ys[j], occ.xs[i]) == (4, 20)         # the patch that hides the whole square
    far = np.ones((32, 32), bool)
    far[:16, 16:] = False      # pixels that patches touching the square (y in 0..8, x in 16..24) cover
    assert np.abs(occ.heatmap[far]).max() < 0.005      # hiding grey (not quite 0.5) costs next to nothing
    assert occ.drops.max() > 0.5 and occ.heatmap.max() > 0.25   # hiding all of it: p from 0.86 to ~0.2

    other = viz.occlusion(model, x, target=0, patch=8, stride=4)  # class 0 gains when the red is hidden
    assert other.target == 0 and other.heatmap.min() == pytest.approx(-occ.heatmap.max(), abs=1e-5)
    assert np.unravel_index(np.argmin(other.heatmap), (32, 32)) == (y, x0)


def test_occlusion_positions_cover_the_edges_and_arguments_are_checked():
    model = red_detector()
    x, _ = viz.prepare(model, red_square_photo())
    occ = viz.occlusion(model, x, patch=10, stride=8)
    assert occ.ys == (0, 8, 16, 22)                   # the last one flush with the edge
    with pytest.raises(ValueError, match="patch=40 is larger than the input 32x32"):
        viz.occlusion(model, x, patch=40)
    with pytest.raises(ValueError, match=r"target must be a class index in \[0, 2\)"):
        viz.occlusion(model, x, target=2, patch=8)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        viz.occlusion(model, x, patch=8, stride=0)
    with pytest.raises(ValueError, match="preprocessed float image"):
        viz.occlusion(model, x[0], patch=8)
    seen = []
    viz.occlusion(model, x, patch=16, stride=16, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 4), (4, 4)]


def test_explain_draws_the_heat_map_over_the_photo_with_a_caption():
    model = red_detector()
    img = viz.explain(model, red_square_photo(), patch=8, stride=4, scale=2, labels=["grey", "red"])
    assert img.height == 64 + viz.caption_height(3)
    heat = np.asarray(img)[:64, :64].astype(int)
    # the blend is brightest (inferno's yellow) over the red square, dark where nothing changed
    inside, outside = heat[8 * 2 + 4, 24 * 2], heat[56, 8]
    assert inside.sum() > outside.sum() + 150
    assert viz.class_label(1, ["grey", "red"]) == "red (class 1)"
    assert viz.class_label(3) == "class 3"


def test_prepare_inverts_the_normalization():
    model = red_detector()
    photo = red_square_photo()
    x, img = viz.prepare(model, photo)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert np.abs(np.asarray(img).astype(int) - photo).max() <= 1
    x2, img2 = viz.prepare(model, x)                     # a preprocessed array is taken as is
    assert np.array_equal(x2, x) and np.array_equal(np.asarray(img2), np.asarray(img))


def test_viz_is_reachable_from_the_package():
    import fastalex
    assert fastalex.viz.filters is viz.filters and "viz" in fastalex.__all__
