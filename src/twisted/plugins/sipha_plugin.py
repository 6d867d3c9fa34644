from twisted.application.service import ServiceMaker

sipha = ServiceMaker("sipha", "sipha.tap", "SIP load-balancing proxy", "sipha")
