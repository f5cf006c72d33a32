from twisted.application.service import ServiceMaker

flm = ServiceMaker("flm", "flm.tap", "FLM: key-protected APIs in front of a local model server", "flm")
