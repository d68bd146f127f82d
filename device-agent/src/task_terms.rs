//! Before training: ask the runtime for the federated task's terms (the
//! provider's, possibly narrowed by the runtime's host), show them, and
//! refuse a task weaker than this device's floor (`train --min-noise`,
//! `--max-clip`, `--min-clients`).
//!
//! The runtime's answer is trusted as far as the runtime's code is: it
//! arrives over attested TLS from an admitted runtime measurement, which got
//! the terms from the provider the same way; the hosts in between see only
//! TLS records.
//!
//! Must never: let training start before the terms met the floor, or
//! accept terms that do not validate or name another task.

use anyhow::{Result, anyhow, bail};
use protocol::{DeviceFloor, FlTaskTerms, Message};

use crate::connect::Conn;

/// The terms of `task` at the runtime, checked against `floor`.
pub async fn agree(conn: &mut Conn, task: &str, floor: &DeviceFloor) -> Result<FlTaskTerms> {
    conn.send(&Message::FlTaskQuery {
        task: task.to_string(),
    })
    .await?;
    let terms = match conn.recv().await? {
        Message::FlTaskTerms { terms } => terms,
        Message::Error { message, .. } => {
            bail!("the runtime gave no terms for task {task:?}: {message}")
        }
        other => bail!("the runtime answered FlTaskQuery with {}", other.kind()),
    };
    check(task, &terms, floor)?;
    Ok(terms)
}

/// The pure part of [`agree`].
pub fn check(task: &str, terms: &FlTaskTerms, floor: &DeviceFloor) -> Result<()> {
    if terms.task != task {
        bail!(
            "asked for the terms of task {task:?}, the runtime sent those of {:?}",
            terms.task
        );
    }
    terms
        .validate()
        .map_err(|e| anyhow!("the runtime sent unusable terms [{}]: {e}", e.code()))?;
    terms.meets(floor).map_err(|e| {
        anyhow!(
            "refusing task {task:?} [{}]: {e}; nothing of this device's data was used",
            e.code()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> FlTaskTerms {
        FlTaskTerms {
            task: "digits".into(),
            arch: "softmax".into(),
            rule: "median".into(),
            clip_norm: 2.0,
            noise_multiplier: 0.5,
            min_clients: 3,
            max_clients: 10,
            rounds: 5,
            devices: Vec::new(),
            allow_insecure_devices: false,
        }
    }

    #[test]
    fn terms_are_checked_for_task_validity_and_floor() {
        let none = DeviceFloor::default();
        assert!(check("digits", &terms(), &none).is_ok());
        let e = check("other", &terms(), &none).unwrap_err();
        assert!(e.to_string().contains("those of \"digits\""), "{e}");
        let bad = FlTaskTerms {
            min_clients: 0,
            ..terms()
        };
        let e = check("digits", &bad, &none).unwrap_err();
        assert!(e.to_string().contains("task-terms-invalid"), "{e}");
        let floor = DeviceFloor {
            min_clients: Some(5),
            ..DeviceFloor::default()
        };
        let e = check("digits", &terms(), &floor).unwrap_err();
        assert!(e.to_string().contains("task-terms-below-floor"), "{e}");
        assert!(e.to_string().contains("--min-clients 5"), "{e}");
    }
}
