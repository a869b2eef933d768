//! The shared core both doors hold: the validated config, the policy pipeline and the egress
//! client. Built once at start-up.

use std::sync::Arc;

use crate::config::Config;
use crate::egress::Egress;
use crate::policy::Pipeline;

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    pub egress: Arc<Egress>,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let config = Arc::new(config);
        let egress = Arc::new(Egress::with_nameservers(&config.nameservers));
        Ok(Arc::new(Gateway {
            pipeline: Pipeline::new(config.clone(), egress.clone())?,
            egress,
            config,
        }))
    }
}
