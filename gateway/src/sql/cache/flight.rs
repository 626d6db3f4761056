//! Stampede protection: concurrent misses for one key on one core run the query once; the
//! others wait for its answer (a `/sql` response, or the PostgreSQL front end's bytes).

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use local_sync::oneshot;

use crate::http::Response;

/// The queries in flight on one core, by key, with who waits for each answer `T`.
#[derive(Debug)]
pub struct Flights<T = Response> {
    waiting: RefCell<HashMap<String, Vec<oneshot::Sender<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            waiting: RefCell::default(),
        }
    }
}

/// A miss's turn.
#[derive(Debug)]
pub enum Turn<T = Response> {
    /// Run the query, then [`Lead::finish`].
    Lead(Lead<T>),
    /// Another request runs it: await its answer (an error means it gave up; run it).
    Follow(oneshot::Receiver<T>),
}

/// The right to run one key's query; dropping it without finishing lets the waiters go
/// (they run the query themselves).
#[derive(Debug)]
pub struct Lead<T = Response> {
    flights: Rc<Flights<T>>,
    key: Option<String>,
}

impl<T: Clone> Flights<T> {
    /// Leads `key` if no one does, else waits for the leader.
    pub fn join(self: &Rc<Self>, key: &str) -> Turn<T> {
        let mut waiting = self.waiting.borrow_mut();
        if let Some(w) = waiting.get_mut(key) {
            let (tx, rx) = oneshot::channel();
            w.push(tx);
            return Turn::Follow(rx);
        }
        waiting.insert(key.to_string(), Vec::new());
        Turn::Lead(Lead {
            flights: self.clone(),
            key: Some(key.to_string()),
        })
    }

    /// Keys in flight.
    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.waiting.borrow().is_empty()
    }
}

impl<T: Clone> Lead<T> {
    /// Hands `response` to every waiter.
    pub fn finish(mut self, response: &T) {
        let Some(key) = self.key.take() else { return };
        let waiters = self.flights.waiting.borrow_mut().remove(&key);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(response.clone());
        }
    }
}

impl<T> Drop for Lead<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.waiting.borrow_mut().remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[monoio::test_all]
    async fn followers_get_the_leaders_response_or_go_when_it_gives_up() {
        let f = Rc::new(Flights::default());
        let Turn::Lead(lead) = f.join("k") else {
            panic!("first is the leader")
        };
        let Turn::Follow(a) = f.join("k") else {
            panic!("second follows")
        };
        let Turn::Follow(b) = f.join("k") else {
            panic!("third follows")
        };
        lead.finish(&Response::text(http::StatusCode::OK, "rows"));
        assert_eq!(&a.await.unwrap().body[..], b"rows");
        assert_eq!(&b.await.unwrap().body[..], b"rows");
        assert!(f.is_empty());
        let Turn::Lead(lead) = f.join("k") else {
            panic!("a new leader")
        };
        let Turn::Follow(c) = f.join("k") else {
            panic!("follows")
        };
        drop(lead);
        assert!(c.await.is_err());
        assert!(f.is_empty());
    }
}
