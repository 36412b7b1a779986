//! Which of a backend's physical functions (VFs of a PF) are handed out: the available
//! instances of its profiles, and a claim that is only kept when provisioning succeeds.

use std::sync::Arc;

use parking_lot::Mutex;

/// A backend's functions, each free or in use. Clones share the same pool, so a provisioned
/// function can give its slot back when it is dropped.
#[derive(Clone, Debug)]
pub struct SlotPool(Arc<Mutex<Vec<bool>>>);

impl SlotPool {
    /// `slots` free functions.
    pub fn new(slots: usize) -> Self {
        Self(Arc::new(Mutex::new(vec![false; slots])))
    }

    /// How many are free.
    pub fn free(&self) -> u32 {
        self.0.lock().iter().filter(|used| !**used).count() as u32
    }

    /// Claims the first free slot and provisions it with `provision`: the slot stays in use
    /// only if that succeeds. `None` when every slot is in use. The pool is not locked while
    /// `provision` runs.
    pub fn claim<T, E>(
        &self,
        provision: impl FnOnce(usize) -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let index = {
            let mut slots = self.0.lock();
            let index = slots.iter().position(|used| !used)?;
            slots[index] = true;
            index
        };
        let result = provision(index);
        if result.is_err() {
            self.release(index);
        }
        Some(result)
    }

    /// What gives slot `index` back, for the function that holds it to call when dropped.
    pub fn releaser(&self, index: usize) -> Box<dyn Fn() + Send + Sync> {
        let pool = self.clone();
        Box::new(move || pool.release(index))
    }

    fn release(&self, index: usize) {
        if let Some(slot) = self.0.lock().get_mut(index) {
            *slot = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_kept_only_when_provisioning_succeeds_and_released_by_its_holder() {
        let pool = SlotPool::new(2);
        assert_eq!(
            pool.claim(|_| Err::<(), _>("refused")),
            Some(Err("refused"))
        );
        assert_eq!(pool.free(), 2, "a failed claim gives its slot back");
        let first = pool.claim(Ok::<_, ()>).unwrap().unwrap();
        let second = pool.claim(Ok::<_, ()>).unwrap().unwrap();
        assert_eq!((first, second, pool.free()), (0, 1, 0));
        assert!(pool.claim(Ok::<_, ()>).is_none(), "all in use");
        pool.releaser(first)();
        assert_eq!(pool.free(), 1);
        assert_eq!(pool.claim(Ok::<_, ()>), Some(Ok(0)), "the first free one");
    }
}
