//! Header maps kept for reuse, per worker thread: emptied with their room
//! kept, so a request path that needs a map (a replay's copy of a head, a
//! response head read from a backend) fills one instead of allocating it.
//! The maps come back from requests that are done with theirs.

use std::cell::RefCell;

use http::HeaderMap;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// The most spare maps a worker keeps (one per request in flight is reused;
/// more only sit there).
const MAX_SPARE: usize = 64;

/// An empty map, from the spares if there is one.
pub(crate) fn take() -> HeaderMap {
    SPARE
        .with_borrow_mut(|spare| spare.pop())
        .unwrap_or_default()
}

/// `map`, emptied, back to the spares (dropped when there are enough).
pub(crate) fn give(mut map: HeaderMap) {
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_room() {
        let mut map = HeaderMap::with_capacity(32);
        map.insert("x-a", "1".parse().unwrap());
        let room = map.capacity();
        give(map);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
    }
}
