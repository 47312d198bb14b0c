"""The charts of `prediction_outcomes`, drawn with matplotlib as SVG images in markdown metadata
(data: URIs, which the Dagster UI's markdown renderer allows for images), so they show offline,
with no chart service."""

import base64
import io
import math

import pandas as pd
from matplotlib import rc_context
from matplotlib.dates import DateFormatter, DayLocator
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

from flight_platform.core.features import ARRIVAL_DELAY_LABELS

NOTHING_TO_CHART = "No answer matched to a flight yet: nothing to chart."
# Text stays text in the SVG (small, searchable, drawn in the browser's sans-serif).
STYLE = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.color": "#dddddd"}


def svg_markdown(alt: str, figure: Figure, caption: str) -> str:
    svg = io.BytesIO()
    figure.savefig(svg, format="svg", bbox_inches="tight")
    return (f"![{alt}](data:image/svg+xml;base64,{base64.b64encode(svg.getvalue()).decode()})"
            f"\n\n{caption}")


def accuracy_chart(daily: pd.DataFrame, versions: pd.DataFrame) -> str:
    """Live accuracy per flight date, a line per version; dashed, the version's offline held-out
    accuracy."""
    if daily.empty:
        return NOTHING_TO_CHART
    days = daily["FlightDate"].nunique()
    with rc_context(STYLE):
        # A backfill of many months stays on screen: at most 9 inches wide.
        figure = Figure(figsize=(min(9.0, max(3.5, 0.18 * days)), 3.2))
        axes = figure.subplots()
        for version in versions.itertuples():
            points = daily[daily["ModelVersion"] == version.ModelVersion]
            offline = version.OfflineAccuracy
            line, = axes.plot(pd.to_datetime(points["FlightDate"]), points["Accuracy"], marker="o",
                              markersize=3, label=f"{version.ModelVersion} ({version.Roles}): live "
                              f"{version.Accuracy:.3f}, offline "
                              + ("unknown (pruned)" if math.isnan(offline) else f"{offline:.3f}"))
            if not math.isnan(offline):
                axes.axhline(offline, color=line.get_color(), linestyle="--", linewidth=1)
        axes.set_ylim(0, 1)
        axes.set_ylabel("accuracy")
        axes.xaxis.set_major_locator(DayLocator(interval=math.ceil(days / 12)))  # a dozen labels
        axes.xaxis.set_major_formatter(DateFormatter("%m-%d"))
        figure.autofmt_xdate()
        axes.legend(loc="upper left", bbox_to_anchor=(0, -0.25), frameon=False)
        return svg_markdown("Live accuracy per day and model version", figure,
                            "Live accuracy per flight date (solid) and each version's offline "
                            "held-out accuracy (dashed).")


def calibration_chart(calibration: pd.DataFrame) -> str:
    """Observed frequency against mean predicted probability, a point per version and bucket
    (labelled with the bucket); a calibrated model's points lie on the dashed diagonal."""
    if calibration.empty:
        return NOTHING_TO_CHART
    values = calibration[["MeanPredictedProbability", "ObservedFrequency"]].to_numpy()
    top = max(0.2, math.ceil(values.max() * 5) / 5)
    with rc_context(STYLE):
        figure = Figure(figsize=(3.6, 3.6))
        axes = figure.subplots()
        axes.plot([0, top], [0, top], color="#888888", linestyle="--", linewidth=1)
        for version, rows in calibration.groupby("ModelVersion"):
            points = axes.scatter(rows["MeanPredictedProbability"], rows["ObservedFrequency"],
                                  s=16, label=version)
            for row in rows.itertuples():
                axes.annotate(str(row.Bucket), (row.MeanPredictedProbability, row.ObservedFrequency),
                              xytext=(4, 3), textcoords="offset points",
                              color=points.get_facecolor()[0])
        axes.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted probability",
                 ylabel="observed frequency")
        axes.legend(loc="upper left", bbox_to_anchor=(0, -0.18), frameon=False)
        buckets = "; ".join(f"{bucket}: {label}" for bucket, label in enumerate(ARRIVAL_DELAY_LABELS))
        return svg_markdown("Calibration per model version", figure,
                            f"Observed frequency (y) against mean predicted probability (x) per "
                            f"bucket ({buckets}); the dashed diagonal is perfect calibration.")
