-- name = "purchase_predictions"
-- kind = "measure"
-- description = "Per customer of repeat_purchases, while purchase_model is fitted: p_alive (the probability they are still a customer) and e90 (expected repeat purchase days in the next horizon_days), both of the BG/NBD model."
-- inputs = ["repeat_purchases", "purchase_model"]
-- scope = "customer"
-- [params]
-- horizon_days = 90
SELECT
    p.customer_id,
    bgnbd_p_alive(m.r, m.alpha, m.a, m.b, p.x, p.t_x, p.t_c) AS p_alive,
    bgnbd_expected(m.r, m.alpha, m.a, m.b, p.x, p.t_x, p.t_c, {{horizon_days}}) AS e90
FROM repeat_purchases p
-- purchase_model has one row: the fit over every customer (see purchase_model.sql)
CROSS JOIN purchase_model m
WHERE m.status = 'fitted'
