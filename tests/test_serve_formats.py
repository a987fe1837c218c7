"""`POST /v1/masks?format=cutout|coco`, `background=` and `threshold=`, in-process on a real uvicorn server
with a predictor whose probability is a known function of the photo: the cut-out is ``outputs.cutout`` of
the served probability, the COCO entry decodes to exactly the served mask, and the mask follows the model's
threshold unless the request sets another. Bad parameters are 400 with one sentence."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from petseg_cli.data.masks import pet_mask
from petseg_cli.predict.outputs import cutout
from test_serve_parts import serving, wait_ready

MODEL_THRESHOLD = 0.3  # what the "run" chose on val: not 0.5, so a mask at 0.5 would differ


class RedIsPet:
    """The pet probability of a pixel is its red value (255 = 1.0): every level from 0 to 255 occurs."""

    def __init__(self):
        from petseg_cli.predict.prediction import ModelInfo

        self.info = ModelInfo(
            "red", "resnet34-unet", 1, 64, None, "nowhere", "test", "cpu", "fp32", threshold=MODEL_THRESHOLD
        )

    def pet_probabilities(self, images, tta=False):
        return [np.ascontiguousarray(image[..., 0]) for image in images]


def gradient_photo(height=48, width=64):
    """Red runs through all 256 levels; green and blue are noise, so the cut-out's colours are checked."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 0] = (np.arange(height * width) * 256 // (height * width)).reshape(height, width)
    return image


def png_of(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(answer):
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(answer.content)) as image:
        return image.mode, np.asarray(image)


@pytest.fixture(scope="module")
def client():
    with serving(RedIsPet, batch_wait_ms=0) as running:
        wait_ready(running)
        yield running


PHOTO = gradient_photo()


def post(client, query="", name="my cat.png"):
    return client.post(f"/v1/masks{query}", files={"file": (name, png_of(PHOTO), "image/png")})


def test_the_cutout_is_outputs_cutout_of_the_served_probability(client):
    _, probability = decoded(post(client, "?format=probs"))
    mode, served = decoded(post(client, "?format=cutout"))
    assert mode == "RGBA" and served.shape == (*PHOTO.shape[:2], 4)
    assert np.array_equal(served, cutout(PHOTO, probability))
    alpha = served[..., 3]
    assert alpha[probability <= 64].max() == 0 and alpha[probability >= 192].min() == 255  # sure: solid or clear
    assert 0 < alpha[probability == 128].min() < 255  # the edge is soft


@pytest.mark.parametrize(("background", "rgb"), [("white", (255, 255, 255)), ("#336699", (0x33, 0x66, 0x99))])
def test_a_background_colour_gives_rgb_on_that_colour(client, background, rgb):
    _, probability = decoded(post(client, "?format=probs"))
    mode, served = decoded(client.post(
        "/v1/masks", params={"format": "cutout", "background": background}, files={"file": ("a.png", png_of(PHOTO))}
    ))
    assert mode == "RGB" and np.array_equal(served, cutout(PHOTO, probability, rgb))
    assert (served[probability == 0] == rgb).all()


def test_the_coco_entry_decodes_through_pycocotools_to_exactly_the_served_mask(client):
    from pycocotools import mask as coco_mask

    _, mask = decoded(post(client, "?format=mask"))
    answer = post(client, "?format=coco", name="my cat.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    entry = answer.json()
    assert (entry["image_id"], entry["file_name"]) == (1, "my cat.png")
    rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode("ascii")}
    assert np.array_equal(coco_mask.decode(rle) * 255, mask)
    assert entry["segmentation"]["size"] == list(PHOTO.shape[:2]) and 0 < entry["score"] <= 1


def test_masks_follow_the_model_s_threshold_unless_the_request_sets_one(client):
    _, probability = decoded(post(client, "?format=probs"))
    _, mask = decoded(post(client, "?format=mask"))
    assert np.array_equal(mask, pet_mask(probability, MODEL_THRESHOLD))
    assert not np.array_equal(mask, pet_mask(probability, 0.5))
    chosen = post(client, "?format=mask&threshold=0.7")
    assert np.array_equal(decoded(chosen)[1], pet_mask(probability, 0.7)) and chosen.headers["x-petseg-threshold"] == "0.7"
    document = json.loads(post(client, "?format=json&threshold=0.7").content)
    assert document["foreground"] == round(float((pet_mask(probability, 0.7) > 0).mean()), 6)
    assert client.get("/v1/model").json()["threshold"] == MODEL_THRESHOLD


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("?format=jpeg", "format must be one of mask, probs, overlay, cutout, coco, json"),
        ("?format=cutout&background=notacolour", "is not a colour"),
        ("?format=cutout&background=rgb(999,0,0)", "is not a colour"),
        ("?format=cutout&background=hsl(0,200%25,50%25)", "is not a colour"),
        ("?format=mask&background=white", "background applies to format=cutout only"),
        ("?background=white", "background applies to format=cutout only"),
        ("?threshold=0", "threshold must be a probability between 0 and 1"),
        ("?threshold=1", "threshold must be a probability between 0 and 1"),
        ("?threshold=-0.2", "threshold must be a probability between 0 and 1"),
        ("?threshold=nan", "threshold must be a probability between 0 and 1"),
        ("?threshold=half", "threshold must be a probability between 0 and 1"),
    ],
)
def test_bad_parameters_are_400_with_one_sentence(client, query, words):
    answer = post(client, query)
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    message = answer.json()["error"]
    assert words in message and message.endswith(".") and "\n" not in message
    assert message.count(". ") == 0  # one sentence
