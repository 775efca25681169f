//! Catalog

use super::*;

pub(super) struct CategoryInfo {
    pub(super) name: &'static str,
    pub(super) base_price: f64,
    /// Weight when choosing favourites and cross-browsing.
    pub(super) popularity: u32,
    /// Indexes into BRANDS, most popular first.
    pub(super) brands: &'static [u8],
}

pub(super) const CATEGORIES: [CategoryInfo; 12] = [
    category("electronics/phones", 420.0, 10, &[0, 1, 4, 23]),
    category("electronics/computers", 780.0, 5, &[2, 0, 4, 23]),
    category("electronics/audio", 95.0, 6, &[3, 1, 0, 23]),
    category("apparel/shoes", 75.0, 9, &[6, 5, 15, 9]),
    category("apparel/womens", 45.0, 9, &[7, 8, 9, 23]),
    category("apparel/mens", 40.0, 7, &[8, 9, 5, 23]),
    category("home/kitchen", 35.0, 8, &[10, 11, 22, 23]),
    category("beauty/skincare", 22.0, 8, &[12, 13, 14]),
    category("sports/outdoor", 60.0, 6, &[15, 16, 5]),
    category("books/fiction", 12.0, 5, &[17, 18, 20]),
    category("toys/games", 25.0, 5, &[19, 20, 23]),
    category("grocery/snacks", 6.0, 6, &[21, 22, 23]),
];

pub(super) const fn category(
    name: &'static str,
    base_price: f64,
    popularity: u32,
    brands: &'static [u8],
) -> CategoryInfo {
    CategoryInfo {
        name,
        base_price,
        popularity,
        brands,
    }
}

/// Fictional brands and their price premium.
pub(super) const BRANDS: [(&str, f64); 24] = [
    ("Lumio", 1.3),
    ("Voltra", 1.0),
    ("Nordpeak", 1.2),
    ("Sonique", 1.1),
    ("Kairo", 0.8),
    ("Stridewell", 1.1),
    ("Fleetfoot", 0.9),
    ("Maison Vert", 1.5),
    ("Atelier Nine", 1.2),
    ("Urbanthread", 0.8),
    ("Copperpot", 1.2),
    ("Hearthly", 0.9),
    ("Glowra", 1.3),
    ("Dermaleaf", 1.0),
    ("Solstice Labs", 1.6),
    ("Trailmark", 1.1),
    ("Peakform", 1.0),
    ("Inkwell Press", 1.0),
    ("Paper Lantern", 0.9),
    ("Blockbuddy", 1.0),
    ("Puzzlewood", 1.1),
    ("Crunchery", 1.0),
    ("Nutmeg & Co", 1.2),
    ("Basics+", 0.7),
];

pub(super) const PAGE_TYPES: [&str; 7] = ["home", "category", "product", "search", "promo", "checkout", "other"];
pub(super) const PAGE_HOME: u8 = 0;
pub(super) const PAGE_CATEGORY: u8 = 1;
pub(super) const PAGE_PRODUCT: u8 = 2;
pub(super) const PAGE_SEARCH: u8 = 3;
pub(super) const PAGE_PROMO: u8 = 4;
pub(super) const PAGE_CHECKOUT: u8 = 5;
pub(super) const PAGE_OTHER: u8 = 6;

pub(super) const ACTIONS: [&str; 2] = ["add", "remove"];
pub(super) const ACTION_ADD: u8 = 0;
pub(super) const ACTION_REMOVE: u8 = 1;

pub(super) const STATUSES: [&str; 5] = ["placed", "paid", "payment_failed", "cancelled", "refunded"];
pub(super) const STATUS_PLACED: u8 = 0;
pub(super) const STATUS_PAID: u8 = 1;
pub(super) const STATUS_PAYMENT_FAILED: u8 = 2;
pub(super) const STATUS_CANCELLED: u8 = 3;
pub(super) const STATUS_REFUNDED: u8 = 4;

/// "No value" in the compact rows below.
pub(super) const NONE_U8: u8 = u8::MAX;
pub(super) const NO_DEVICE: u32 = u32::MAX;
pub(super) const NO_SESSION: u64 = u64::MAX;

/// A product, or only a category (category pages), or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Product {
    pub(super) category: u8,
    pub(super) brand: u8,
    pub(super) item: u8,
}

impl Product {
    pub(super) const NONE: Product = Product {
        category: NONE_U8,
        brand: NONE_U8,
        item: NONE_U8,
    };

    pub(super) fn category_only(category: u8) -> Self {
        Product {
            category,
            ..Product::NONE
        }
    }

    pub(super) fn category_name(self) -> Option<&'static str> {
        (self.category != NONE_U8).then(|| CATEGORIES[usize::from(self.category)].name)
    }

    pub(super) fn brand_name(self) -> Option<&'static str> {
        (self.brand != NONE_U8).then(|| BRANDS[usize::from(self.brand)].0)
    }

    pub(super) fn price(self) -> Option<f64> {
        (self.item != NONE_U8).then(|| unit_price(self))
    }
}

/// Listed price of a product: fixed per product (the same on every view and order).
pub(super) fn unit_price(product: Product) -> f64 {
    let category = &CATEGORIES[usize::from(product.category)];
    let premium = BRANDS[usize::from(product.brand)].1;
    let key = (u64::from(product.category) << 16) | (u64::from(product.brand) << 8) | u64::from(product.item);
    let jitter = 0.85 + 0.3 * unit_interval(mix64(key));
    let raw =
        category.base_price * PRICE_FLOOR_FACTOR * (PRICE_STEP * f64::from(product.item)).exp() * premium * jitter;
    shelf_price(raw)
}

/// Prices as shops show them: x.99 above 10, cents below.
pub(super) fn shelf_price(raw: f64) -> f64 {
    if raw >= 10.0 {
        raw.floor() + 0.99
    } else {
        cents(raw.max(0.5))
    }
}

pub(super) fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
