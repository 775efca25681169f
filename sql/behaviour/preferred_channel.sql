-- name = "preferred_channel"
-- family = "behaviour"
-- description = "With 5+ clicks of a known channel in 30 days, the channel of the most of them (ties: smallest channel). Value: the channel. Score: its share of those clicks."
-- inputs = ["customer_channel_days"]
-- scope = "customer"
-- [params]
-- window_days = 30
-- min_clicks = 5
-- [checks]
-- not_null = ["score"]
WITH channel_clicks AS (
    -- clicks of the window per customer and channel (clicks without a channel are not kept)
    SELECT customer_id, channel, SUM(clicks) AS clicks
    FROM customer_channel_days
    WHERE event_day > {{as_of_day}} - {{window_days}}
    GROUP BY customer_id, channel
),
ranked_channels AS (
    SELECT
        customer_id,
        channel,
        clicks,
        SUM(clicks) OVER (PARTITION BY customer_id) AS channel_clicks,
        ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY clicks DESC, channel ASC) AS channel_rank
    FROM channel_clicks
)
SELECT customer_id, channel AS value, CAST(clicks AS DOUBLE) / channel_clicks AS score
FROM ranked_channels
WHERE channel_rank = 1 AND channel_clicks >= {{min_clicks}}
