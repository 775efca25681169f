//! Lists of stored segments that grow by one segment per commit (a state table's day, a
//! day's de-duplication ids, the processed-file list): which of the newest segments a new
//! one takes in, so a list of n commits keeps about `max + log2(n)` segments and an item
//! is written about `log2(n)` times, however long the list grows.
//!
//! Owns: the joining rule. Must not: read, write or know what a segment holds.

/// How many of the newest segments (`sizes`, oldest first) a new segment of `new` items
/// takes in: while at least `max` segments are left before it and it holds at least half
/// the items of the newest of them (a binary counter). Joining them all at once writes each
/// of their items once.
pub fn newest_to_join(sizes: &[usize], max: usize, new: usize) -> usize {
    let (mut taken, mut joined) = (0, new);
    while sizes.len() - taken >= max.max(1) && 2 * joined >= sizes[sizes.len() - taken - 1] {
        joined += sizes[sizes.len() - taken - 1];
        taken += 1;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::newest_to_join;

    #[test]
    fn up_to_max_segments_nothing_is_joined() {
        assert_eq!(newest_to_join(&[1; 7], 8, 100), 0);
        assert_eq!(newest_to_join(&[], 8, 1), 0);
    }

    #[test]
    fn a_new_segment_takes_in_the_newest_while_it_holds_half_of_the_next() {
        // Nine before it: the newest two are taken in (1 item holds half of 1, then 2 of 1),
        // and eight are left.
        let sizes = [100, 64, 32, 16, 8, 4, 2, 1, 1];
        assert_eq!(newest_to_join(&sizes, 8, 1), 2);
        let sizes = [100, 90, 80, 70, 60, 50, 40, 30, 20, 2, 1];
        assert_eq!(
            newest_to_join(&sizes, 8, 1),
            2,
            "takes 1 (2 items), then 2 (4); 4 is less than half of 20"
        );
        assert_eq!(newest_to_join(&[5; 12], 8, 1), 0, "1 is less than half of 5");
    }

    /// A thousand commits of one item each: few segments, each item written a few times.
    #[test]
    fn a_long_list_keeps_few_segments_and_writes_each_item_about_log2_times() {
        let (mut sizes, mut written) = (Vec::<usize>::new(), 0);
        for _ in 0..1000 {
            let taken = newest_to_join(&sizes, 8, 1);
            let joined = 1 + sizes.drain(sizes.len() - taken..).sum::<usize>();
            written += joined;
            sizes.push(joined);
            assert!(sizes.len() <= 8 + 10, "{} segments", sizes.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(
            written <= 1000 * 11,
            "each item written {:.1} times",
            written as f64 / 1000.0
        );
    }
}
