//! Reading a range that spans partitions, one bounded query at a time.
//!
//! CQL's own paging state is tied to one statement and one partition; our
//! ranges cross partitions (buckets) and stop at a row limit, so the page is
//! driven by us: each query asks for at most `page_rows` rows after a cursor
//! (the key of the last row the previous page returned).

use std::future::Future;

/// Reads rows in key order from `partitions`, in the order given, until
/// `limit` rows are read or every partition is exhausted.
///
/// `page(partition, cursor, wanted)` runs one query for at most `wanted`
/// rows of `partition` that follow `cursor` (`None`: from the start of the
/// range). A page shorter than `wanted` ends its partition; `cursor_of` gives
/// the cursor a row leaves behind.
pub async fn read_pages<P, T, C, E, F, Fut>(
    partitions: impl IntoIterator<Item = P>,
    limit: usize,
    page_rows: usize,
    cursor_of: impl Fn(&T) -> C,
    page: F,
) -> Result<Vec<T>, E>
where
    P: Copy,
    F: FnMut(P, Option<C>, usize) -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
{
    read_pages_until(partitions, limit, page_rows, cursor_of, |_| false, page).await
}

/// [`read_pages`] that also stops after the first row for which
/// `stop_after` (called on each row, in order) says so, keeping that row:
/// for a budget other than a row count, such as bytes. No query is made
/// after it; the rows a query returned past it are dropped.
pub async fn read_pages_until<P, T, C, E, F, Fut>(
    partitions: impl IntoIterator<Item = P>,
    limit: usize,
    page_rows: usize,
    cursor_of: impl Fn(&T) -> C,
    mut stop_after: impl FnMut(&T) -> bool,
    mut page: F,
) -> Result<Vec<T>, E>
where
    P: Copy,
    F: FnMut(P, Option<C>, usize) -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
{
    let mut rows = Vec::new();
    if limit == 0 || page_rows == 0 {
        return Ok(rows);
    }
    for partition in partitions {
        let mut cursor = None;
        loop {
            let wanted = (limit - rows.len()).min(page_rows);
            let got = page(partition, cursor.take(), wanted).await?;
            let exhausted = got.len() < wanted;
            cursor = got.last().map(&cursor_of);
            for row in got {
                let stop = stop_after(&row);
                rows.push(row);
                if stop {
                    return Ok(rows);
                }
            }
            if exhausted || rows.len() >= limit {
                break;
            }
        }
        if rows.len() >= limit {
            break;
        }
    }
    rows.truncate(limit);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Partition `p` holds keys `p*100 .. p*100 + len(p)`.
    async fn read(partitions: &[(u64, u64)], limit: usize, page_rows: usize) -> (Vec<u64>, usize) {
        read_until(partitions, limit, page_rows, |_| false).await
    }

    async fn read_until(
        partitions: &[(u64, u64)],
        limit: usize,
        page_rows: usize,
        stop_after: impl FnMut(&u64) -> bool,
    ) -> (Vec<u64>, usize) {
        let queries = RefCell::new(0);
        let rows = read_pages_until(
            partitions.iter().copied(),
            limit,
            page_rows,
            |&key: &u64| key,
            stop_after,
            |(partition, len): (u64, u64), after: Option<u64>, wanted: usize| {
                *queries.borrow_mut() += 1;
                let start = after.map_or(partition * 100, |a| a + 1);
                let end = (partition * 100 + len).min(start + wanted as u64);
                async move { Ok::<_, ()>((start..end).collect::<Vec<u64>>()) }
            },
        )
        .await
        .unwrap();
        (rows, queries.into_inner())
    }

    #[tokio::test]
    async fn pages_through_partitions_in_order_and_stops_at_the_limit() {
        let partitions = [(0, 5), (1, 0), (2, 3)];
        let (rows, _) = read(&partitions, 100, 2).await;
        assert_eq!(rows, [0, 1, 2, 3, 4, 200, 201, 202]);
        let (rows, queries) = read(&partitions, 4, 2).await;
        assert_eq!(rows, [0, 1, 2, 3]);
        assert_eq!(queries, 2, "no query once the limit is reached");
        let (rows, _) = read(&partitions, 6, 1_000).await;
        assert_eq!(rows, [0, 1, 2, 3, 4, 200]);
        assert!(read(&partitions, 0, 2).await.0.is_empty());
    }

    #[tokio::test]
    async fn stops_after_the_row_the_predicate_names_without_another_query() {
        let partitions = [(0, 5), (1, 0), (2, 3)];
        let (rows, queries) = read_until(&partitions, 100, 2, |&key| key == 3).await;
        assert_eq!(rows, [0, 1, 2, 3], "the row it stops after is kept");
        assert_eq!(queries, 2);
        let (rows, queries) = read_until(&partitions, 100, 2, |&key| key == 200).await;
        assert_eq!(rows, [0, 1, 2, 3, 4, 200], "across partitions");
        assert_eq!(queries, 5);
        let (rows, _) = read_until(&partitions, 2, 2, |&key| key == 3).await;
        assert_eq!(rows, [0, 1], "the limit still holds");
    }
}
