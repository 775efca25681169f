-- name = "purchase_model"
-- kind = "measure"
-- description = "One row: the BG/NBD parameters (r, alpha, a, b) fitted by maximum likelihood to every customer of repeat_purchases, with the log-likelihood, the customers fitted and `status`: 'fitted', or why the predictive tags are not published (too few customers, no convergence)."
-- inputs = ["repeat_purchases"]
-- [params]
-- # fewer customers than this publish no predictive tag
-- min_customers = 100
WITH purchase_patterns AS (
    -- customers with the same summary weigh as one row: the fit reads patterns, not customers
    SELECT x, t_x, t_c, COUNT(*) AS customers
    FROM repeat_purchases
    GROUP BY x, t_x, t_c
),
fitted AS (
    SELECT bgnbd_fit(x, t_x, t_c, customers) AS model
    FROM purchase_patterns
)
SELECT
    model['r'] AS r,
    model['alpha'] AS alpha,
    model['a'] AS a,
    model['b'] AS b,
    model['log_likelihood'] AS log_likelihood,
    CAST(model['customers'] AS BIGINT) AS customers,
    CASE
        WHEN COALESCE(model['customers'], 0) < {{min_customers}}
            THEN 'not published: ' || CAST(COALESCE(model['customers'], 0) AS BIGINT) || ' customers with a paid order before today, fewer than {{min_customers}}'
        WHEN NOT model['converged'] THEN 'not published: the fit did not converge'
        ELSE 'fitted'
    END AS status
FROM fitted
