//! The transport's state as device parts: a snapshot for DEV_PARTS_GET, and a restore for
//! DEV_PARTS_SET that checks everything against this device first and then applies it all,
//! so a refused state leaves the function as it was.

use super::{QUEUE_MAX_SIZE, Queue, State, Transport};
use crate::hw::parts::{CommonCfg, DeviceState, QueueState};
use crate::hw::virtqueue::Virtqueue;

/// Why a saved state cannot be restored into this function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The function is running: parts are only set while it is stopped.
    #[error("the function is not stopped")]
    Running,
    /// The state is of a different device (features, queue count, device config).
    #[error("the state does not match this device: {0}")]
    Mismatch(&'static str),
    /// A value is impossible for this device.
    #[error("invalid state: {0}")]
    Invalid(&'static str),
}

impl Transport {
    /// The function's state.
    pub fn device_state(&self) -> DeviceState {
        snapshot(&self.inner.state.lock())
    }

    /// Restores a state saved from a function of the same kind; only while stopped. On error
    /// nothing changed.
    pub fn restore_state(&self, state: &DeviceState) -> Result<(), RestoreError> {
        // Stopped, so no pass holds the device.
        let mut device = self.inner.device.lock();
        let mut s = self.inner.state.lock();
        if !s.stopped {
            return Err(RestoreError::Running);
        }
        let mut queues = check(&s, state)?;
        if !device.accepts_config(&state.device_config) {
            return Err(RestoreError::Mismatch("device config"));
        }
        for q in &mut queues {
            q.epoch = s.epoch();
        }
        s.driver_features = state.driver_features;
        s.device_feature_select = state.common.device_feature_select;
        s.driver_feature_select = state.common.driver_feature_select;
        s.config_msix_vector = state.common.config_msix_vector;
        s.queue_select = state.common.queue_select;
        s.status = state.status;
        s.queues = queues;
        s.isr = state.isr;
        device.restore_config(&state.device_config);
        s.device_config = device.config();
        Ok(())
    }
}

fn snapshot(s: &State) -> DeviceState {
    let queues = (0u16..)
        .zip(&s.queues)
        .map(|(index, q)| {
            let (last_avail_idx, used_idx) = q.ring.as_ref().map_or((0, 0), Virtqueue::indices);
            QueueState {
                size: q.size,
                msix_vector: q.msix_vector,
                enabled: q.enabled,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
                notify_off: index,
                last_avail_idx,
                used_idx,
                legacy_pfn: q.legacy_pfn,
            }
        })
        .collect::<Vec<_>>();
    DeviceState {
        device_features: Some(s.offered),
        driver_features: s.driver_features,
        common: CommonCfg {
            device_feature_select: s.device_feature_select,
            driver_feature_select: s.driver_feature_select,
            config_msix_vector: s.config_msix_vector,
            num_queues: u16::try_from(queues.len()).unwrap_or(u16::MAX),
            queue_select: s.queue_select,
        },
        status: s.status,
        queues,
        device_config: s.device_config.clone(),
        isr: s.isr,
    }
}

/// Checks `state` against the device and builds the queues it describes.
fn check(s: &State, state: &DeviceState) -> Result<Vec<Queue>, RestoreError> {
    if state.device_features.is_some_and(|f| f != s.offered) {
        return Err(RestoreError::Mismatch("device features"));
    }
    if state.driver_features & !s.offered != 0 {
        return Err(RestoreError::Invalid(
            "driver features the device does not offer",
        ));
    }
    if usize::from(state.common.num_queues) != s.queues.len()
        || state.queues.len() != s.queues.len()
    {
        return Err(RestoreError::Mismatch("number of queues"));
    }
    (0u16..)
        .zip(&state.queues)
        .map(|(index, q)| queue(index, q))
        .collect()
}

fn queue(index: u16, q: &QueueState) -> Result<Queue, RestoreError> {
    if q.notify_off != index {
        return Err(RestoreError::Mismatch("queue_notify_off"));
    }
    let ring = if q.enabled {
        if q.size > QUEUE_MAX_SIZE {
            return Err(RestoreError::Invalid("queue size"));
        }
        if q.last_avail_idx.wrapping_sub(q.used_idx) > q.size {
            return Err(RestoreError::Invalid("ring positions"));
        }
        let ring = Virtqueue::new(q.size, q.desc, q.driver, q.device)
            .map_err(|_| RestoreError::Invalid("queue size"))?;
        Some(ring.with_indices(q.last_avail_idx, q.used_idx))
    } else {
        if q.legacy_pfn != 0 || q.last_avail_idx != 0 || q.used_idx != 0 {
            return Err(RestoreError::Invalid("state of a disabled queue"));
        }
        None
    };
    Ok(Queue {
        size: q.size,
        msix_vector: q.msix_vector,
        enabled: q.enabled,
        desc: q.desc,
        driver: q.driver,
        device: q.device,
        legacy_pfn: q.legacy_pfn,
        ring,
        epoch: 0,
    })
}
