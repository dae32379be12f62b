"""Plotly views of a circuit graph: node importance by layer and head, and the top edges drawn.

- `importance_heatmap(graph, k)`: s(v) (`analyses.graph.node_importance` over the top-k edges)
  as a layers x (heads + MLP) heatmap, layer 0 on top as in the probe's head-patching maps.
- `edges_figure(graph, k)`: the top-k edges as lines between nodes placed with layers on the y
  axis (embed below layer 0, logits above the last layer; a layer's MLP half a layer above its
  heads, since it reads them), heads along x. Width follows |score|, colour its sign (blue:
  corrupting the edge raises the metric, red: lowers it; for a logit difference red edges are
  the ones the task needs). Hovering shows each edge's name and score.
- `curves_figure`: faithfulness curves (or any y over circuit size) on one axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from analyses.graph import Graph, node_importance, receiver_nodes
from probe.names import parse


def importance_heatmap(graph: Graph, k: int | None = None, *, title: str | None = None) -> go.Figure:
    """Layers x (heads, MLP) heatmap of s(v) over the top-k edges (all edges if k is None); an MoE
    layer's MLP cell sums its experts'."""
    s = node_importance(graph, k)
    L, H = graph.shape.n_layers, graph.shape.n_heads
    z = [
        [s[f"L{layer}.H{h}"] for h in range(H)] + [sum(s[n] for n in graph.shape.mlp_senders(layer))]
        for layer in range(L)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"H{h}" for h in range(H)] + ["mlp"],
            y=[f"L{layer}" for layer in range(L)],
            colorscale="Viridis",
            colorbar={"title": "s(v)"},
            hovertemplate="%{y}.%{x}: %{z:.4g}<extra></extra>",
        )
    )
    what = f"top {k} edges" if k is not None else "all edges"
    fig.update_layout(
        title=title
        or f"Node importance s(v) over the {what} ({_describe(graph)}); embed {s['embed']:.3g}, logits {s['logits']:.3g}",
        xaxis_title="head",
        yaxis_title="layer",
        yaxis={"autorange": "reversed"},
        height=max(300, 26 * L + 160),
        width=max(500, 40 * (H + 1) + 260),
    )
    return fig


def _position(graph: Graph, node: str) -> tuple[float, float]:
    """(x, y) of a node: heads at (h, layer), the MLP at (H, layer + 0.5), embed and logits centred."""
    H, L = graph.shape.n_heads, graph.shape.n_layers
    if node == "embed":
        return (H / 2, -1.0)
    if node == "logits":
        return (H / 2, float(L))
    n = parse(node)
    if n.kind == "mlp":
        return (float(H), n.layer + 0.5)
    return (float(n.head), float(n.layer))


def edges_figure(graph: Graph, k: int = 50, *, title: str | None = None) -> go.Figure:
    """The top-k edges by |score| drawn between their nodes (layers on the y axis)."""
    top = graph.top(k)
    biggest = max((abs(graph.score(e)) for e in top), default=0.0) or 1.0
    fig = go.Figure()
    used: set[str] = set()
    for edge in reversed(top):  # the strongest edges drawn last, on top
        sender, receiver = edge.split("->")
        value = graph.score(edge)
        port = parse(receiver).port
        for target in receiver_nodes(graph.shape, receiver):
            (x0, y0), (x1, y1) = _position(graph, sender), _position(graph, target)
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[y0, y1],
                    mode="lines",
                    showlegend=False,
                    line={"width": 0.5 + 6 * abs(value) / biggest, "color": "#2166ac" if value > 0 else "#b2182b"},
                    opacity=0.35 + 0.65 * abs(value) / biggest,
                    hovertemplate=f"{edge}{' (' + port + ')' if port else ''}: {value:.4g}<extra></extra>",
                )
            )
            used |= {sender, target}
    names = [n for n in [*graph.senders, "logits"] if n in used]
    xy = [_position(graph, n) for n in names]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in xy],
            y=[p[1] for p in xy],
            mode="markers+text",
            text=names,
            textposition="top center",
            marker={"size": 9, "color": "#444"},
            showlegend=False,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    L, H = graph.shape.n_layers, graph.shape.n_heads
    fig.update_layout(
        title=title or f"Top {len(top)} edges ({_describe(graph)}); blue: score > 0, red: score < 0",
        xaxis={
            "title": "head (MLP at the right)",
            "tickvals": list(range(H)) + [H],
            "ticktext": [f"H{h}" for h in range(H)] + ["mlp"],
        },
        yaxis={
            "title": "layer",
            "tickvals": [-1, *range(L), L],
            "ticktext": ["embed", *[f"L{i}" for i in range(L)], "logits"],
        },
        height=max(400, 70 * (L + 2)),
        width=max(600, 60 * (H + 1) + 200),
    )
    return fig


def curves_figure(
    curves: Mapping[str, tuple[Sequence[int | float], Sequence[float]]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_x: bool = True,
) -> go.Figure:
    """Lines named by `curves` keys, each (x values, y values)."""
    fig = go.Figure()
    for name, (x, y) in curves.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=450, width=800)
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def _describe(graph: Graph) -> str:
    meta = graph.meta
    parts = [str(meta[k]) for k in ("model", "task", "method", "metric") if meta.get(k)]
    return ", ".join(parts) or f"{len(graph.edges)} edges"
