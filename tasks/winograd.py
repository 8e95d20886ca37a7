"""The reused model as an ONNX graph that computes the same function with 2.7x fewer
multiplications in its second convolution (Winograd's minimal filtering, F(2x2, 3x3)).

Why: on two cores the plain export already runs at the CPU's fp32 limit (conv2 is 92 % of the
model's 4.9 MFLOP), so only fewer operations can go faster. The weights, the architecture and
fp32 stay as they are; only the arithmetic is rearranged, so the probabilities differ from
Keras' by float rounding alone (under 1e-6 on MNIST test), unlike int8, which moved them by up
to 0.027 (docs/performance.md).

Two facts about this model make the transform cheap:
- `MaxPooling2D` floors: of conv2's 11x11 outputs it keeps rows and columns 0-9, and each of
  its 2x2 windows is exactly one F(2x2, 3x3) output tile. So conv2 is computed on the 5x5
  tiles the pool keeps (100 outputs, not 121), and the pool is the max over each tile.
  max(relu(y + b)) = relu(max(y) + b), so bias and ReLU follow the max.
- The same floor means conv1 only needs its top-left 24x24 outputs, from the top-left 26x26
  of the digit.

Tiles are NHWC (tile rows, tile columns, channels), the order Keras' `Flatten` uses, so the
dense layer's weights are used unchanged. Each of the 16 Winograd positions is one GEMM of
(tiles, 32) by (32, 64): separate tensors, no stacking copies (measured faster on this model
than one batched GEMM with its concat and split).
"""

from __future__ import annotations

import numpy as np

# F(2x2, 3x3) transforms (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
TILES = 5  # conv2 output tiles per side that the floor pool keeps
OPSET = 18


def transformed_filters(kernel: np.ndarray) -> np.ndarray:
    """Keras conv kernel (3, 3, in, out) to the 16 Winograd-domain matrices (16, in, out),
    position k = 4a + b. Computed in float64, then rounded once."""
    u = np.einsum("ai,ijcd,bj->abcd", _G, kernel.astype(np.float64), _G)
    return u.reshape(16, kernel.shape[2], kernel.shape[3]).astype(np.float32)


class _Graph:
    """Just enough of a graph builder to keep the layout code readable."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self._n = 0

    def const(self, name: str, value) -> str:
        if name not in self.inits:
            self.inits[name] = np.asarray(value)
        return name

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values),
                          np.array(values, np.int64))

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def strided(self, x: str, axis: int, start: int) -> str:
        """Every second row (axis 1) or column (axis 2) from `start`: row j of every tile."""
        return self.op("Slice", [x, self.ints(start), self.ints(start + 2 * TILES - 1),
                                 self.ints(axis), self.ints(2)])

    def input_transform(self, rows: list[str]) -> list[str]:
        """B^T applied along one axis to the 4 rows of every tile: [d0-d2, d1+d2, d2-d1, d1-d3]."""
        d0, d1, d2, d3 = rows
        return [self.op("Sub", [d0, d2]), self.op("Add", [d1, d2]),
                self.op("Sub", [d2, d1]), self.op("Sub", [d1, d3])]

    def output_transform(self, m: list[str]) -> list[str]:
        """A^T along one axis: [m0+m1+m2, m1-m2-m3]."""
        return [self.op("Sum", m[:3]), self.op("Sub", [self.op("Sub", [m[1], m[2]]), m[3]])]


def winograd_onnx(weights: list[np.ndarray]) -> bytes:
    """The ONNX model (input (n, 28, 28, 1) in [0, 1], output (n, 10) probabilities) for the
    weights of `build_mnist_convnet` (`model.get_weights()`, in layer order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(weights) != 6:
        raise ValueError(f"not mnist_convnet weights: {len(weights)} arrays, expected 6")
    k1, b1, k2, b2, k3, b3 = (np.asarray(w) for w in weights)
    if k1.shape != (3, 3, 1, 32) or k2.shape != (3, 3, 32, 64) or k3.shape != (1600, 10):
        raise ValueError(f"not mnist_convnet weights: {k1.shape}, {k2.shape}, {k3.shape}")
    g = _Graph()
    x = g.op("Reshape", ["digit", g.ints(-1, 1, 28, 28)])  # one channel: NHWC to NCHW is a reshape
    x = g.op("Slice", [x, g.ints(0, 0), g.ints(26, 26), g.ints(2, 3)])
    w1 = np.ascontiguousarray(k1.transpose(3, 2, 0, 1), np.float32)
    x = g.op("Conv", [x, g.const("conv1_w", w1), g.const("conv1_b", b1.astype(np.float32))],
             kernel_shape=[3, 3])
    x = g.op("MaxPool", [g.op("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])  # (n, 32, 12, 12)
    h = g.op("Transpose", [x], perm=[0, 2, 3, 1])  # (n, 12, 12, 32)
    by_row = g.input_transform([g.strided(h, 1, i) for i in range(4)])  # (n, 5, 12, 32) each
    v = [vb for t in by_row for vb in g.input_transform([g.strided(t, 2, j) for j in range(4)])]
    u = transformed_filters(k2)
    m = [g.op("MatMul", [v[k], g.const(f"conv2_u{k}", u[k])]) for k in range(16)]  # (n, 5, 5, 64)
    cols = [g.output_transform([m[4 * a + b] for a in range(4)]) for b in range(4)]
    ys = [y for a2 in range(2) for y in g.output_transform([cols[b][a2] for b in range(4)])]
    y = g.op("Relu", [g.op("Add", [g.op("Max", ys), g.const("conv2_b", b2.astype(np.float32))])])
    y = g.op("Reshape", [y, g.ints(-1, TILES * TILES * 64)])
    y = g.op("Gemm", [y, g.const("dense_w", k3.astype(np.float32)),
                      g.const("dense_b", b3.astype(np.float32))])
    g.nodes.append(helper.make_node("Softmax", [y], ["probs"], axis=-1))
    graph = helper.make_graph(
        g.nodes, "mnist_convnet_winograd",
        [helper.make_tensor_value_info("digit", TensorProto.FLOAT, ["n", 28, 28, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(v, k) for k, v in g.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cifras")
    model.ir_version = min(model.ir_version, 10)  # readable by older ONNX Runtime releases
    onnx.checker.check_model(model)
    return model.SerializeToString()
