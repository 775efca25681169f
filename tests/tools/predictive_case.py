"""Writes the golden case `fitted_model` of the predictive tags (sql/predictive/*.cases.toml).

The expected rows come from an implementation nobody here wrote: the Python package
`lifetimes` 0.11.3 (BetaGeoFitter, its log-likelihood, conditional_probability_alive and
conditional_expected_number_of_purchases_up_to_time), with the fit polished by scipy to a
tight tolerance so that the expected scores hold to 1e-4. The purchases are drawn from a
BG/NBD process (seeded), in days, and written as paid order events; the case adds the spec's
edges by hand (paid today, two orders on one day, a placed-only order, a re-sent paid event).

    pip install lifetimes==0.11.3
    python tests/tools/predictive_case.py > /tmp/case.toml   # then paste over the case
"""

import datetime as dt

import numpy as np
from lifetimes import BetaGeoFitter
from scipy.optimize import minimize

AS_OF = dt.datetime(2026, 11, 20, 12, 0, 0)
D = AS_OF.date()
CUSTOMERS = 150
rng = np.random.default_rng(20261120)


def draw_purchase_days():
    """Distinct purchase days (offsets before D, > 0) of one BG/NBD customer."""
    r, alpha, a, b = 0.6, 25.0, 0.7, 2.5
    lam = rng.gamma(r, 1.0 / alpha)
    p = rng.beta(a, b)
    first = int(rng.integers(15, 300))
    t, days = 0.0, {first}
    while True:
        t += rng.exponential(1.0 / lam)
        if t >= first:
            break
        days.add(first - int(t))
        if rng.random() < p:
            break
    return sorted((d for d in days if d > 0), reverse=True)


rows, summaries = [], {}
order = 0


def paid(customer, day_offset, hour=10, status="paid"):
    global order
    order += 1
    at = dt.datetime.combine(D - dt.timedelta(days=day_offset), dt.time(hour, 0))
    rows.append((f"o-{order:04d}", customer, at, f"ord-{order:04d}", status))


for i in range(CUSTOMERS):
    customer = f"bg_{i:03d}"
    days = draw_purchase_days()
    for d in days:
        paid(customer, d)
    summaries[customer] = (len(days) - 1, days[0] - days[-1], days[0])

# Edges, by hand.
paid("bg_today", 0)  # paid today only: not before D, no row
paid("bg_sameday", 40, hour=9)  # two orders on one day and one more: x = 1
paid("bg_sameday", 40, hour=18)
paid("bg_sameday", 10)
summaries["bg_sameday"] = (1, 30, 40)
paid("bg_placed", 20, status="placed")  # never paid: no row
paid("bg_placed", 50)
summaries["bg_placed"] = (0, 0, 50)
paid("bg_today2", 30)  # an order before D and one today: the one of today is not counted
paid("bg_today2", 0)
summaries["bg_today2"] = (0, 0, 30)

names = sorted(summaries)
x = np.array([summaries[n][0] for n in names], dtype=float)
t_x = np.array([summaries[n][1] for n in names], dtype=float)
T = np.array([summaries[n][2] for n in names], dtype=float)

fitter = BetaGeoFitter()
fitter.fit(x, t_x, T)
nll = BetaGeoFitter._negative_log_likelihood


def cost(log_params):
    return nll(log_params, x, t_x, T, np.ones_like(x), 0.0) * len(x)


start = np.log(fitter.params_[["r", "alpha", "a", "b"]].values)
best = minimize(cost, start, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-12, "maxiter": 100000, "maxfev": 100000})
for _ in range(5):
    best = minimize(cost, best.x, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-12, "maxiter": 100000, "maxfev": 100000})
r, alpha, a, b = np.exp(best.x)
fitter.params_["r"], fitter.params_["alpha"], fitter.params_["a"], fitter.params_["b"] = r, alpha, a, b
p_alive = fitter.conditional_probability_alive(x, t_x, T)
e90 = fitter.conditional_expected_number_of_purchases_up_to_time(90, x, t_x, T)


def band(value, edges, names_):
    for edge, name in zip(edges, names_):
        if value >= edge:
            return name
    return names_[-1]


print(f"# fit: r = {r:.6f}, alpha = {alpha:.6f}, a = {a:.6f}, b = {b:.6f}, log-likelihood = {-best.fun:.6f}")
for tag in ["churn_risk", "expected_orders_90"]:
    print(f"# ---- expected of {tag}")
    print("customer_id | value         | score")
    for n, pa, e in zip(names, p_alive, e90):
        if tag == "churn_risk":
            print(f"{n} | {band(pa, [0.7, 0.3], ['likely_active', 'at_risk', 'likely_lost'])} | {pa:.9f}")
        else:
            print(f"{n} | {band(e, [1.0, 0.3], ['high', 'medium', 'low'])} | {e:.9f}")
print("# ---- events")
print("event_id | customer_id | event_time | order_id | status | amount")
for event_id, customer, at, order_id, status in rows:
    print(f"{event_id} | {customer} | {at.isoformat()}Z | {order_id} | {status} | 10")
